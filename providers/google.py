"""Google Gemini through the google-genai SDK's async client: the adapter.

The translation both ways is in ``gemini_request`` and ``gemini_answer`` (no network);
this module holds the SDK client and calls it. SDK findings this adapter relies on (google-genai 3.4):

- The SDK would use aiohttp for its async calls whenever aiohttp is importable (it is in
  this environment), and its aiohttp path silently retries a refused connection after
  sleeping 1-10 s unless retry_options are set. We hand it our own pooled
  ``httpx.AsyncClient`` (``HttpOptions.httpx_async_client``) instead: the aiohttp path
  is then never taken, every transport failure is an ``httpx`` exception, and the
  client (ours) is closed in ``aclose``.
- The SDK passes a single float timeout per request, which would make the connect
  timeout equal the read timeout; a request event hook puts ``connect_timeout`` back.
- ``retry_options`` of one attempt: the SDK never retries (the router does).
- A ``base_url`` with a path prefix (``http://host:port/google``) is honoured: requests
  go to ``{base_url}/v1beta/models/...``. The API version is pinned to ``v1beta`` (the
  SDK's default would be ``v1``, which lacks some of the fields used here).
- ``FileData`` (``file_uri``) only takes Google Cloud Storage / Files-API URIs, so remote
  http(s) image URLs are refused as a capability error.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import certifi
import httpx
import orjson
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from . import base, errors, transport
from .gemini_answer import AnswerTranslation, ThoughtSignatures
from .gemini_request import RequestTranslation

logger = logging.getLogger("manallm.providers")

API_VERSION = "v1beta"
DEFAULT_URL = "https://generativelanguage.googleapis.com"
MAX_MODEL_PAGES = 20
_ssl_context = None
# The httpx responses the SDK opens while a stream of ours is making its calls: the
# SDK never closes a streamed response, so chat_stream closes them itself.
_opened: contextvars.ContextVar[list[httpx.Response] | None] = contextvars.ContextVar("google_opened",
                                                                                       default=None)


async def _track_response(response: httpx.Response) -> None:
    """Response event hook: note a response opened for the stream being served, if any."""
    opened = _opened.get()
    if opened is not None:
        opened.append(response)


async def _tracked(awaitable: Any, opened: list[httpx.Response]) -> Any:
    """Await an SDK call with the responses it opens noted in ``opened``."""
    token = _opened.set(opened)
    try:
        return await awaitable
    finally:
        _opened.reset(token)


def ssl_context() -> ssl.SSLContext:
    """One TLS context for every Google client in the process (loading CAs costs ~20 ms)."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context(
            cafile=os.environ.get("SSL_CERT_FILE", certifi.where()), capath=os.environ.get("SSL_CERT_DIR"),
        )
    return _ssl_context


class SDKClient(NamedTuple):
    """The SDK client and the pooled httpx client (ours) it sends through."""

    sdk: genai.Client
    http: httpx.AsyncClient

    async def aclose(self) -> None:
        try:
            self.sdk.close()  # the SDK's own (unused) sync httpx client
            await self.sdk.aio.aclose()
        except Exception:  # pragma: no cover - best effort
            pass
        await self.http.aclose()


class GoogleProvider(base.Provider):
    kind = "google"

    def __init__(self, name: str, *, default_model: str | None = None, **kwargs: Any):
        super().__init__(name, **kwargs)
        self.default_model = default_model or "gemini-2.5-flash"
        signatures = ThoughtSignatures()
        self.requests = RequestTranslation(name, signatures=signatures, default_model=self.default_model,
                                           scrub=self.scrub)
        self.answers = AnswerTranslation(name, signatures=signatures, scrub=self.scrub)
        self._clients = transport.ClientHolder(name, self._new_client, SDKClient.aclose, lambda c: c.http.is_closed)

    # --- the client ------------------------------------------------------------------

    async def _set_connect_timeout(self, request: httpx.Request) -> None:
        timeout = dict(request.extensions.get("timeout") or {})
        timeout["connect"] = self.connect_timeout
        request.extensions["timeout"] = timeout

    async def _skip_malformed_events(self, response: httpx.Response) -> None:
        # docs/architecture.md#routing: a malformed upstream event is skipped and logged. The SDK raises on
        # one and cannot go on, so unparsable events are dropped before it reads them.
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            response.stream = WellFormedEvents(response.stream, self.name)

    def _new_client(self) -> SDKClient:
        if not self.api_key:
            raise errors.UpstreamAuthError(f"{self.name}: no API key is configured.")
        context = ssl_context()
        http = transport.client(
            verify=context,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            follow_redirects=False,
            event_hooks={"request": [self._set_connect_timeout],
                         "response": [self._skip_malformed_events, _track_response]},
        )
        options = types.HttpOptions(
            api_version=API_VERSION,
            timeout=max(1, int(self.timeout * 1000)),
            retry_options=types.HttpRetryOptions(attempts=1),
            httpx_async_client=http,
            # The SDK builds a sync client and a websocket context we never use; let them
            # share the TLS context instead of loading the CA bundle twice more.
            client_args={"verify": context},
            async_client_args={"ssl": context},
        )
        if self.base_url:
            options.base_url = self.base_url
        return SDKClient(genai.Client(vertexai=False, api_key=self.api_key, http_options=options), http)

    @property
    def client(self) -> genai.Client:
        return self._clients.get().sdk

    @property
    def http(self) -> httpx.AsyncClient | None:
        """The pooled httpx client the SDK sends through (None before first use)."""
        client = self._clients.current
        return client.http if client is not None else None

    async def aclose(self) -> None:
        await self._clients.aclose()

    # --- failures ----------------------------------------------------------------------

    def _error(self, exc: BaseException) -> errors.ProviderError | None:
        """The taxonomy error for an exception raised through the SDK, or None."""
        if isinstance(exc, errors.ProviderError):
            return exc
        if isinstance(exc, genai_errors.APIError):
            return self.answers.api_error(exc)
        where = transport.safe_url(self.base_url or DEFAULT_URL)
        mapped = transport.transport_error(exc, name=self.name, where=where, scrub=self.scrub)
        if mapped is not None:
            return mapped
        if isinstance(exc, genai_errors.UnknownApiResponseError):
            return errors.ProtocolError(f"{self.name}: malformed answer from {where}")
        if isinstance(exc, pydantic.ValidationError):
            return errors.ProtocolError(f"{self.name}: unexpected answer shape from {where}")
        return None

    def _raise(self, exc: BaseException):
        mapped = self._error(exc)
        if mapped is None or mapped is exc:
            raise exc
        raise mapped from None

    # --- the interface ---------------------------------------------------------------

    async def chat(self, model: str, body: dict) -> dict:
        request = self.requests.request(model, body)
        try:
            response = await self.client.aio.models.generate_content(
                model=request.model, contents=request.contents, config=request.config)
        except Exception as exc:
            self._raise(exc)
        return self.answers.completion(request.model, response)

    async def chat_stream(self, model: str, body: dict) -> AsyncIterator[dict]:
        request = self.requests.request(model, body)
        translation = self.answers.stream(request.model)
        opened: list[httpx.Response] = []
        try:
            try:
                stream = await _tracked(self.client.aio.models.generate_content_stream(
                    model=request.model, contents=request.contents, config=request.config), opened)
            except Exception as exc:
                self._raise(exc)
            async with contextlib.aclosing(stream):
                iterator = stream.__aiter__()
                while True:
                    try:
                        response = await _tracked(iterator.__anext__(), opened)
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        self._raise(exc)
                    for chunk in translation.chunks(response):
                        yield chunk
            for chunk in translation.end():
                yield chunk
        finally:
            # Closed when the consumer leaves (client disconnect, first-token timeout):
            # the SDK's generator does not close its response, so the upstream request
            # is cut here, at once, rather than when the garbage collector gets to it.
            for response in opened:
                await response.aclose()

    async def embed(self, model: str, body: dict) -> dict:
        model = self.requests.model(model)
        inputs = base.embedding_inputs(body)
        config = None
        if body.get("dimensions"):
            config = types.EmbedContentConfig(output_dimensionality=int(body["dimensions"]))
        try:
            response = await self.client.aio.models.embed_content(model=model, contents=inputs, config=config)
        except Exception as exc:
            self._raise(exc)
        return self.answers.embeddings(model, response, len(inputs))

    async def list_models(self) -> list[str]:
        ids = []
        try:
            pager = await self.client.aio.models.list(config={"page_size": 1000})
            pages = 0
            while True:
                for item in pager.page:
                    name = item.name or ""
                    if name.startswith("models/"):
                        name = name[len("models/"):]
                    if name:
                        ids.append(name)
                pages += 1
                if not pager.config.get("page_token") or pages >= MAX_MODEL_PAGES:
                    break
                await pager.next_page()
        except Exception as exc:
            self._raise(exc)
        return ids

    async def probe(self) -> None:
        try:
            await self.client.aio.models.list(config={"page_size": 1})
        except Exception as exc:
            self._raise(exc)


EVENT_END = re.compile(rb"\r?\n\r?\n")


class WellFormedEvents(httpx.AsyncByteStream):
    """An SSE body with the events whose data is not JSON left out (and logged)."""

    def __init__(self, inner, name):
        self.inner = inner
        self.name = name

    async def __aiter__(self):
        buffer = b""
        async for chunk in self.inner:
            buffer += chunk
            while (end := EVENT_END.search(buffer)) is not None:
                event, buffer = buffer[:end.end()], buffer[end.end():]
                if self._well_formed(event):
                    yield event
        if buffer.strip() and self._well_formed(buffer):
            yield buffer

    def _well_formed(self, event):
        data = b"\n".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        if not data:
            return True
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.warning("%s: skipped a malformed stream event: %r", self.name, data[:200])
            return False
        return True

    async def aclose(self):
        await self.inner.aclose()
