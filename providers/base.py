"""The provider interface every adapter implements, and the OpenAI shapes they return.

Adapters take the client's OpenAI request body (a dict they must not mutate: the router
hands the same body to every entry of a chain) plus the provider-side model name, and
answer in OpenAI shapes. Every failure is raised as a ``providers.errors`` class.
"""
from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from manallm.errors import InvalidRequest

from .openai_request import input_strings

# Upstream text quoted in an error message is cut to this many characters.
MAX_MESSAGE_CHARS = 1000

# scheme://user:password@host/path?query#fragment: group 1 the scheme, 2 host and path.
# Userinfo may itself hold an unescaped "@": the greedy run ends at the last one.
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)(?:[^\s/?#'\"<>]*@)?([^\s?#'\"<>]*)(?:[?#][^\s'\"<>]*)?")


def redact_urls(text: str) -> str:
    """``text`` with every URL's userinfo, query string and fragment removed.

    Credentials ride in both (``https://user:pass@host``, ``?key=…``); an upstream URL
    quoted in an error message, a log line or ``/v1/health``'s ``last_error`` shows
    only its scheme, host and path (README#exposing-manallm).
    """
    return _URL.sub(r"\1\2", text)


@runtime_checkable
class ProviderAPI(Protocol):
    """What the router, the catalog and the health probe use of a provider.

    ``Provider`` below is the base every adapter extends; this is the interface they
    rely on, so a test double (or a future adapter) need only match it.
    """

    name: str
    kind: str | None
    in_flight: int

    def saturated(self) -> bool: ...

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...

    async def chat(self, model: str, body: dict) -> dict: ...

    def chat_stream(self, model: str, body: dict) -> AsyncIterator[dict]: ...

    async def embed(self, model: str, body: dict) -> dict: ...

    async def list_models(self) -> list[str]: ...

    async def probe(self) -> None: ...

    async def supports_tools(self, model: str) -> bool: ...

    async def aclose(self) -> None: ...


class Provider:
    kind: str | None = None

    def __init__(self, name: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0, connect_timeout: float = 2.0, max_concurrent: int | None = None,
                 **options: Any):
        self.name = name
        self.base_url = (base_url or "").rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_concurrent = max_concurrent
        self.options = options
        self.in_flight = 0

    def __repr__(self) -> str:
        # Never the key: reprs end up in logs.
        return f"<{type(self).__name__} {self.name} {redact_urls(self.base_url)}>"

    def scrub(self, text: Any) -> str:
        """``text`` with the API key masked and URLs redacted (redact_urls), cut to
        MAX_MESSAGE_CHARS: for any upstream text that goes into an error message."""
        text = redact_urls(str(text or ""))
        if self.api_key and self.api_key in text:
            text = text.replace(self.api_key, "***")
        return text[:MAX_MESSAGE_CHARS]

    # --- concurrency cap (README#configuration <PROVIDER>_MAX_CONCURRENT) ---------------------------

    def saturated(self) -> bool:
        """Whether the provider is at its cap now (a read: the route preview asks it too)."""
        return self.max_concurrent is not None and self.in_flight >= self.max_concurrent

    def try_acquire(self) -> bool:
        """Take an in-flight slot, or say the provider is saturated. Never blocks."""
        if self.saturated():
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1

    # --- what adapters implement ---------------------------------------------------

    async def chat(self, model: str, body: dict) -> dict:
        """A whole chat answer as an OpenAI ``chat.completion`` dict."""
        raise NotImplementedError

    def chat_stream(self, model: str, body: dict) -> AsyncIterator[dict]:
        """An async iterator of OpenAI ``chat.completion.chunk`` dicts.

        Errors before the first chunk are raised from the first ``__anext__``. A final
        chunk with ``choices: []`` and ``usage`` is yielded whenever usage is known (the
        router drops it unless the client asked for it). Malformed upstream events are
        skipped; an upstream that ends without its end marker just ends the iterator.
        """
        raise NotImplementedError

    async def embed(self, model: str, body: dict) -> dict:
        """An OpenAI embeddings ``list`` dict with float vectors."""
        raise NotImplementedError

    async def list_models(self) -> list[str]:
        """The provider's model ids (without the provider prefix)."""
        raise NotImplementedError

    async def probe(self) -> None:
        """A cheap liveness check; returns None or raises a ProviderError."""
        raise NotImplementedError

    async def supports_tools(self, model: str) -> bool:
        return True

    async def aclose(self) -> None:
        pass


# --- OpenAI shapes shared by the adapters that translate --------------------------------


def new_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int | None, completion_tokens: int | None) -> dict:
    prompt_tokens = int(prompt_tokens or 0)
    completion_tokens = int(completion_tokens or 0)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(model: str, message: dict, finish_reason: str | None, usage: dict | None = None, *,
               id: str | None = None, created: int | None = None) -> dict:
    return {
        "id": id or new_id(),
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage,
    }


def chunk(model: str, delta: dict, finish_reason: str | None = None, *, id: str, created: int) -> dict:
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage_chunk(model: str, usage: dict, *, id: str, created: int) -> dict:
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage}


def embeddings(model: str, vectors: list, prompt_tokens: int | None = 0) -> dict:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": int(prompt_tokens or 0), "total_tokens": int(prompt_tokens or 0)},
    }


def embedding_inputs(body: dict) -> list[str]:
    """The embeddings ``input`` as a list of strings (token-id inputs are refused)."""
    items = input_strings(body)
    if items is None:
        raise InvalidRequest("'input' must be a non-empty string or a list of strings.", param="input")
    return items


def has_content(chunk: dict) -> bool:
    """True when a chunk carries what counts as the first token: text or a tool call."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
            return True
    return False
