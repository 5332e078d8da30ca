"""The response cache (README#response-cache): repeated requests to an alias with
``cache_ttl`` answered without the upstream.

The OpenAI views ask ``begin`` (one dict lookup; None for every request that does not
cache) and, for a caching alias, ``Pending.lookup`` before the chain walk; after a
successful answer ``Pending.answered`` stores it, and a stream is wrapped in a
``Recorder`` that assembles its chunks and stores the answer only when the stream ended
normally. One canonical answer is kept per key, a ``chat.completion`` (or the embeddings
answer) as JSON: a plain hit sends those bytes as they are, a streamed hit replays them
as SSE chunks (``replay``), so a plain and a streamed request for the same thing share
an entry.

The key is a SHA-256 over the consumer, the alias, the call type and the request body
with sorted keys, less the fields that do not change the answer (``IGNORED``): one
consumer never reads another's answers.

A hit carries no tokens on the request's Exchange (``prompt_tokens`` and
``completion_tokens`` stay 0, ``cache`` is ``"hit"``): usage counts it as a request and a
cache hit, and nothing is charged to a consumer's ``tpm`` or budget.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from manallm import metrics
from manallm.exchange import Exchange

from .cache_backends import Backend, LRUBackend, RedisBackend, Unavailable
from .served import Served
from .streams import Relay
from .table import aliases

logger = logging.getLogger("manallm.cache")

# Request fields that do not change the answer; ``model`` is the alias, keyed apart.
IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "model"})
# How a choice may end to be stored: not cut (None), not refused (content_filter).
FORMAT = 1  # of a stored entry (``Pending._put``); part of the key, so a new format never reads an old entry
COMPLETE = frozenset({"stop", "length", "tool_calls", "function_call"})


class ResponseCache:
    """This process's backend, made on first use from settings: Redis with ``REDIS_URL``,
    else an LRU of ``CACHE_MAX_BYTES``. ``clock`` (wall time) dates entries for ``Age``."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = (RedisBackend(settings.REDIS_URL) if settings.REDIS_URL
                             else LRUBackend(settings.CACHE_MAX_BYTES))
        return self._backend

    def use(self, backend: Backend | None) -> None:
        """Serve from ``backend`` (None: rebuild from settings on next use); for tests."""
        self._backend = backend


responses = ResponseCache()


def cache_key(consumer: str, alias: str, kind: str, body: dict) -> str:
    """The entry's key: consumer, alias, call type and the canonical body (sorted keys,
    ``IGNORED`` fields left out)."""
    canonical = [FORMAT, consumer, alias, kind, {key: value for key, value in body.items() if key not in IGNORED}]
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def cache_control(request: HttpRequest) -> frozenset[str]:
    """The request's ``Cache-Control`` directives, lower-case, without arguments."""
    value = request.META.get("HTTP_CACHE_CONTROL")
    if not value:
        return frozenset()
    return frozenset(part.partition("=")[0].strip().lower() for part in value.split(","))


def begin(request: HttpRequest, body: dict, exchange: Exchange) -> Pending | None:
    """The cache's part in this request, or None when its alias does not cache (also every
    direct ``provider/model`` request): then nothing else here runs."""
    ttl = aliases.cache_ttl(exchange.requested)
    if not ttl:
        return None
    return Pending(request, body, exchange, ttl)


class Pending:
    """One request to a caching alias: its key, whether it may read and store, and the
    result it is counted under (``hit``, ``miss`` or ``bypass``)."""

    __slots__ = ("exchange", "alias", "ttl", "key", "read", "store", "stream", "include_usage")

    def __init__(self, request: HttpRequest, body: dict, exchange: Exchange, ttl: int):
        self.exchange = exchange
        self.alias = exchange.requested
        self.ttl = ttl
        directives = cache_control(request)
        self.store = "no-store" not in directives
        self.read = self.store and "no-cache" not in directives
        self.stream = bool(body.get("stream"))
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        try:
            self.key = cache_key(exchange.consumer, self.alias, exchange.kind, body)
        except (TypeError, orjson.JSONEncodeError):  # a value orjson cannot write (an int past 64 bits)
            self.key = None
            self.read = self.store = False

    async def lookup(self) -> HttpResponse | None:
        """The stored answer as this request's response, or None: go upstream (and
        store). Counts the request as a hit, a miss or a bypass."""
        if not self.read:
            self._count("miss" if self.store else "bypass")
            return None
        try:
            stored = await responses.backend.get(self.key)
        except Unavailable:
            self._count("bypass")
            return None
        if stored is None:
            self._count("miss")
            return None
        meta, _, answer = stored.partition(b"\n")
        try:
            meta = orjson.loads(meta)
            resolved, at = meta["resolved"], float(meta["at"])
        except (ValueError, TypeError, KeyError):  # not an entry this version wrote: go upstream, overwrite it
            logger.warning("response cache: unreadable entry for %s; answering from upstream", self.alias)
            self._count("bypass")
            return None
        self._count("hit")
        self.exchange.alias = self.alias
        self.exchange.target = resolved
        headers = {"X-Mana-LLM-Resolved": resolved, "X-Mana-LLM-Cache": "hit",
                   "Age": str(max(0, int(responses.clock() - at)))}
        if self.stream:
            answer = replay(orjson.loads(answer), self.include_usage)
            headers |= {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            response = HttpResponse(answer, content_type="text/event-stream", headers=headers)
        else:
            response = HttpResponse(answer, content_type="application/json", headers=headers)
        response["Content-Length"] = str(len(answer))
        return response

    def answered(self, response: HttpResponse, served: Served[dict]) -> None:
        """A plain answer (chat or embeddings) went out as ``response``: mark it a miss and
        store its body when the answer is complete."""
        response["X-Mana-LLM-Cache"] = "miss"
        if self.store and (self.exchange.kind != "chat" or storable(served.value)):
            self._put(served.target, response.content)

    def recorder(self, served: Served[Relay]) -> Relay | Recorder:
        """The events a streamed miss sends: the relay, wrapped to assemble and store the
        answer when this request may store."""
        return Recorder(served.value, self, served.target) if self.store else served.value

    def _put(self, resolved: str, answer: bytes) -> None:
        meta = orjson.dumps({"at": responses.clock(), "resolved": resolved})
        responses.backend.put(self.key, meta + b"\n" + answer, self.ttl)

    def _count(self, result: str) -> None:
        self.exchange.cache = result
        metrics.child(metrics.cache_requests, self.alias, result).inc()


def storable(answer: dict[str, Any]) -> bool:
    """A chat answer worth replaying: every choice finished (not cut, not refused)."""
    choices = answer.get("choices")
    if not choices:
        return False
    for choice in choices:
        if choice.get("finish_reason") not in COMPLETE or (choice.get("message") or {}).get("refusal"):
            return False
    return True


# --- streams ------------------------------------------------------------------------------


class Recorder:
    """A caching alias's stream as ``routing.views.sse`` iterates it: the relay's events,
    seen by an ``Assembly`` on the way; when the relay ends without a failure the
    assembled answer is stored. A stream cut by the client or a stopping server never
    reaches that end; one that failed upstream ends with ``relay.failure`` set."""

    def __init__(self, relay: Relay, pending: Pending, resolved: str):
        self._relay = relay
        self._pending = pending
        self._resolved = resolved
        self._assembly = Assembly()

    @property
    def usage(self) -> dict | None:
        return self._relay.usage

    @property
    def failure(self):
        return self._relay.failure

    def __aiter__(self) -> Recorder:
        return self

    async def __anext__(self) -> dict:
        try:
            chunk = await anext(self._relay)
        except StopAsyncIteration:
            if self._relay.failure is None:
                answer = self._assembly.answer(self._relay.usage)
                if answer is not None and storable(answer):
                    self._pending._put(self._resolved, orjson.dumps(answer))
            raise
        self._assembly.see(chunk)
        return chunk

    async def aclose(self) -> None:
        await self._relay.aclose()


class Assembly:
    """A ``chat.completion`` built from the chunks of one stream: per choice its content,
    tool calls (merged by index) and finish reason. ``broken`` when the stream carried an
    error event, a refusal, or chunks from more than one model (a continued stream)."""

    def __init__(self) -> None:
        self.head: dict | None = None
        self.choices: dict[int, dict] = {}
        self.broken = False

    def see(self, chunk: dict) -> None:
        if "error" in chunk:
            self.broken = True
            return
        if self.head is None:
            self.head = {"id": chunk.get("id"), "created": chunk.get("created"), "model": chunk.get("model")}
        elif chunk.get("model") != self.head["model"]:
            self.broken = True
        for choice in chunk.get("choices") or ():
            state = self.choices.setdefault(choice.get("index") or 0, {"content": [], "tools": {}, "finish": None})
            delta = choice.get("delta") or {}
            if delta.get("content"):
                state["content"].append(delta["content"])
            if delta.get("refusal"):
                self.broken = True
            for call in delta.get("tool_calls") or ():
                _merge_tool_call(state["tools"], call)
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]

    def answer(self, usage: dict | None) -> dict | None:
        if self.broken or self.head is None or not self.choices:
            return None
        choices = []
        for index, state in sorted(self.choices.items()):
            message: dict[str, Any] = {"role": "assistant",
                                       "content": "".join(state["content"]) if state["content"] or not state["tools"]
                                       else None}
            if state["tools"]:
                message["tool_calls"] = [call for _, call in sorted(state["tools"].items())]
            choices.append({"index": index, "message": message, "finish_reason": state["finish"]})
        answer = {**self.head, "object": "chat.completion", "choices": choices}
        if usage:
            answer["usage"] = usage
        return answer


def _merge_tool_call(calls: dict[int, dict], delta: dict) -> None:
    call = calls.setdefault(delta.get("index") or 0, {"id": None, "type": "function",
                                                      "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        call["id"] = delta["id"]
    function = delta.get("function") or {}
    if function.get("name"):
        call["function"]["name"] += function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]


def replay(answer: dict, include_usage: bool) -> bytes:
    """A stored ``chat.completion`` as an OpenAI SSE stream: per choice a role chunk, its
    content, its tool calls and its finish reason; the usage chunk when the client asked
    (``stream_options.include_usage``); ``[DONE]``."""
    head = {"id": answer.get("id"), "object": "chat.completion.chunk", "created": answer.get("created"),
            "model": answer.get("model")}
    events = []

    def chunk(index: int, delta: dict, finish_reason: str | None = None) -> None:
        events.append({**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}]})

    for choice in answer.get("choices") or ():
        index, message = choice.get("index") or 0, choice.get("message") or {}
        chunk(index, {"role": "assistant", "content": ""})
        if message.get("content"):
            chunk(index, {"content": message["content"]})
        if message.get("tool_calls"):
            chunk(index, {"tool_calls": [{"index": n, **call} for n, call in enumerate(message["tool_calls"])]})
        chunk(index, {}, choice.get("finish_reason"))
    if include_usage and answer.get("usage"):
        events.append({**head, "choices": [], "usage": answer["usage"]})
    return b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events) + b"data: [DONE]\n\n"
