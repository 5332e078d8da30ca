"""The HTTP half every HTTP adapter shares: one pooled httpx client per provider, and the
place where error answers become ``providers.errors`` (transport failures are mapped by
``transport.transport_error``'s table).

The API key only ever lives in the client's default headers, whose repr httpx masks;
every message built here is scrubbed of it as well.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson

from . import errors, transport
from .base import MAX_MESSAGE_CHARS, Provider
from .transport import CAUGHT, ClientHolder, safe_url

logger = logging.getLogger("manallm.providers")

# After a stream's end marker, how long to wait for the body's end (for keep-alive reuse).
DRAIN_TIMEOUT = 1.0


def _request_options(json: Any, timeout: Any) -> dict:
    """httpx keyword arguments for a JSON body (orjson-encoded) and a per-call timeout."""
    options = {}
    if json is not None:
        options["content"] = dumps(json)
        options["headers"] = {"Content-Type": "application/json"}
    if timeout is not None:
        options["timeout"] = timeout
    return options


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def error_details(content: Any) -> tuple[str, str | None]:
    """(message, code) from an error answer's body.

    Understands the OpenAI envelope ``{"error": {"message", "code", "type"}}`` (also with a
    numeric ``code``, as OpenRouter sends), Ollama's ``{"error": "..."}``, ``{"message"}``
    / ``{"detail"}`` bodies, and plain text.
    """
    if isinstance(content, (bytes, bytearray)):
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            data = content.decode("utf-8", "replace")
    else:
        data = content
    message, code = None, None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or error.get("error")
            raw_code = error.get("code")
            if isinstance(raw_code, str) and raw_code:
                code = raw_code
            elif isinstance(error.get("type"), str) and error["type"] not in ("", "invalid_request_error", "error"):
                code = error["type"]
            metadata = error.get("metadata")
            if isinstance(metadata, dict) and isinstance(metadata.get("raw"), str) and not message:
                message = metadata["raw"]
        elif error is not None:
            message = error
    elif isinstance(data, str):
        message = data.strip()
    if message is not None and not isinstance(message, str):
        message = orjson.dumps(message).decode()
    return (message or "").strip()[:MAX_MESSAGE_CHARS], code


def payload_error(payload: Any, *, scrub: Callable[[str], str] = str) -> errors.ProviderError:
    """The taxonomy error for an error carried inside a 200 answer or a stream event.

    A numeric ``code`` in the 4xx/5xx range is read as an HTTP status; otherwise a
    context-length or content-policy message keeps its class, a rate limit is a 429, and
    anything else counts as an upstream server error (502).
    """
    message, code = error_details(payload)
    message = scrub(message or "The upstream reported an error.")
    error = payload.get("error") if isinstance(payload, dict) else None
    raw_code = error.get("code") if isinstance(error, dict) else None
    if isinstance(raw_code, int) and 400 <= raw_code < 600:
        return errors.from_status(raw_code, message, code=code)
    classified = errors.from_status(400, message, code=code)
    if isinstance(classified, (errors.ContextLengthExceeded, errors.Blocked)):
        return classified
    text = f"{message} {code or ''}".lower()
    if "rate_limit" in text or "rate limit" in text:
        return errors.from_status(429, message, code=code)
    return errors.from_status(502, message, code=code)


class HTTPProvider(Provider):
    """A Provider that talks HTTP through one pooled, keep-alive ``httpx.AsyncClient``."""

    def __init__(self, name: str, **kwargs: Any):
        super().__init__(name, **kwargs)
        # Credentials in the URL (basic auth of a proxy in front of Ollama) travel as the
        # client's auth: aiohttp refuses a URL that carries them beside an Authorization header.
        url = httpx.URL(self.base_url)
        self.url_auth = (url.username, url.password) if url.username else None
        if self.url_auth:
            self.base_url = str(url.copy_with(userinfo=b""))
        self._clients = ClientHolder(name, self._new_client, httpx.AsyncClient.aclose, lambda c: c.is_closed)

    # --- the client ------------------------------------------------------------------

    def default_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "manallm"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _new_client(self) -> httpx.AsyncClient:
        return transport.client(timeout=self.timeout, connect_timeout=self.connect_timeout,
                                headers=self.default_headers(), auth=self.url_auth, follow_redirects=False)

    @property
    def client(self) -> httpx.AsyncClient:
        return self._clients.get()

    async def aclose(self) -> None:
        await self._clients.aclose()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    # --- failures ----------------------------------------------------------------------

    def transport_error(self, exc: BaseException) -> errors.ProviderError:
        """The taxonomy error for a transport exception (``transport.TRANSPORT_ERRORS``)."""
        return transport.transport_error(exc, name=self.name, where=safe_url(self.base_url), scrub=self.scrub)

    @contextlib.contextmanager
    def transport_errors(self):
        try:
            yield
        except CAUGHT as exc:
            raise self.transport_error(exc) from None

    def response_error(self, response: httpx.Response, content: bytes) -> errors.ProviderError:
        """``errors.from_status`` for a non-2xx answer whose body has been read."""
        message, code = error_details(content)
        message = self.scrub(message or response.reason_phrase or "error")
        retry_after = errors.parse_retry_after(response.headers.get("retry-after"))
        return errors.from_status(
            response.status_code, f"{self.name}: {message}", code=code, retry_after=retry_after
        )

    def payload_error(self, payload: Any) -> errors.ProviderError:
        error = payload_error(payload, scrub=self.scrub)
        error.message = f"{self.name}: {error.message}"
        error.args = (error.message,)
        return error

    # --- requests ----------------------------------------------------------------------

    async def request_json(self, method: str, path: str, json: Any = None, *, timeout: Any = None) -> Any:
        """One request; the decoded JSON answer, or a taxonomy error."""
        kwargs = _request_options(json, timeout)
        with self.transport_errors():
            response = await self.client.request(method, self.url(path), **kwargs)
        transport.untie(response)
        if not response.is_success:
            raise self.response_error(response, response.content)
        try:
            return loads(response.content)
        except orjson.JSONDecodeError:
            raise errors.ProtocolError(
                f"{self.name}: {method} {path} answered {response.status_code} with a body that is not JSON"
            ) from None

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, json: Any = None, *,
                     timeout: Any = None) -> AsyncIterator[httpx.Response]:
        """A streamed request: yields the 2xx response, its body still unread.

        A non-2xx answer raises its taxonomy error; transport failures while the caller
        reads the body are mapped too. Leaving the block (normally, on an error, on
        ``aclose()`` of the generator using it, or on cancellation) closes the response,
        so an abandoned upstream request is cut at once.
        """
        kwargs = _request_options(json, timeout)
        response = None
        try:
            async with self.client.stream(method, self.url(path), **kwargs) as response:
                if not response.is_success:
                    raise self.response_error(response, await response.aread())
                yield response
        except CAUGHT as exc:
            raise self.transport_error(exc) from None
        finally:
            if response is not None:
                transport.untie(response)

    async def check(self, method: str, path: str, *, timeout: Any = None) -> None:
        """A status-only request (probes): reads no body, raises on any failure."""
        async with self.stream(method, path, timeout=timeout):
            pass


async def drain(iterator: AsyncIterator, timeout: float = DRAIN_TIMEOUT) -> None:
    """Read what is left of a streamed body after its end marker (``iterator`` is the one
    reading it), so the connection goes back to the pool for reuse; an upstream that keeps
    the body open longer than ``timeout`` just has its connection closed."""
    try:
        async with asyncio.timeout(timeout):
            async for _ in iterator:
                pass
    except (TimeoutError, httpx.HTTPError, httpx.StreamError, *CAUGHT):
        pass


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The ``data`` payloads of a server-sent-events stream, one string per event.

    Comments (``: keep-alive``) and other fields are ignored; multi-line ``data`` fields
    are joined with newlines; a last event without its blank line is still delivered.
    """
    data = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
    if data:
        yield "\n".join(data)
