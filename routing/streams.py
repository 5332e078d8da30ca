"""A committed stream (docs/architecture.md#routing, "Streams"): from its first content token to ``[DONE]``.

``first_token`` reads an upstream stream until its first content token, so the router
can still fall over before anything is sent; ``Relay`` is what the caller iterates once
an entry is committed: the buffered chunks, then the rest under STREAM_IDLE_TIMEOUT. A
failure after that point ends the stream with an ``{"error": …}`` event (never another
provider's text, never a clean end), counted on the deployment's breaker.

The one exception is opt-in (README#stream-continuation): for an alias with
``stream_continuation`` the relay keeps a ``Transcript`` of what went out, and on such a
failure asks the router for a ``prefill`` entry to continue the text, relaying its chunks
as the same stream; when none can, the stream ends with the original failure as above.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings

from health.board import BreakerBoard
from manallm import metrics
from providers import errors
from providers.base import has_content

from .served import Served
from .table import Entry


class StreamRouter(Protocol):
    """What a relay needs from the router that committed it (``routing.router.Router``)."""

    breakers: BreakerBoard

    def finish(self, served: Served, usage: dict | None, *, completion: bool = True) -> None: ...

    async def continue_stream(self, body: dict, chain: tuple[Entry, ...], failed: Entry, tried: set[str],
                              wrap: Callable[[AsyncIterator[dict]], AsyncIterator[dict]]) -> Served[Started] | None: ...

logger = logging.getLogger("manallm.router")

Chunk = dict[str, Any]


@dataclass
class Started:
    """A stream whose first content token is in hand (or that ended without any)."""

    buffered: list[Chunk]
    iterator: AsyncIterator[Chunk] | None = None
    first_token_at: float | None = None
    chunks: list[Chunk] = field(default_factory=list)


async def first_token(iterator: AsyncIterator[Chunk], timeout: float, clock: Callable[[], float]) -> Started:
    """Read until the first content token, within ``timeout``; close the upstream on failure."""
    buffered = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    return Started(buffered)  # an empty upstream stream is a success
                buffered.append(chunk)
                if has_content(chunk):
                    return Started(buffered, iterator, clock())
    except BaseException:
        await close_quietly(iterator)
        raise


class Relay:
    """The events of a committed stream: chunk dicts, and an ``{"error": …}`` dict when
    the stream fails after its first token.

    Iterate it to the end or ``aclose`` it: either frees the upstream and the concurrency
    slot, even when iteration never began (an async generator that never started would
    not run its ``finally``).

    Given a ``chain`` (the alias opted in to stream continuation), a failure after the
    first token is continued on a ``prefill`` entry of it (README#stream-continuation);
    only then does the relay keep a ``Transcript`` of what went out.
    """

    def __init__(self, router: StreamRouter, served: Served[Started], include_usage: bool, *,
                 body: dict | None = None, chain: tuple[Entry, ...] | None = None):
        self._router = router
        self._served = served
        self._started = served.value
        self._include_usage = include_usage
        self._continuation = None if chain is None else Continuation(body or {}, chain, served.value)
        self._events = self._relay()
        self._began = False
        # How the stream went, for the request's bookkeeping (manallm.exchange): usage
        # summed over its parts, and the failure that ended it, if one did.
        self.usage: dict | None = None
        self.failure: errors.ProviderError | None = None

    def __del__(self):
        # Safety net: a response dropped before iteration (the client left between the
        # first token and the response start) still frees its slot and its upstream.
        if not self._began:
            self._served.release()
            if self._started.iterator is not None:
                try:
                    asyncio.get_running_loop().create_task(close_quietly(self._started.iterator))
                except RuntimeError:
                    pass

    @property
    def first_token_seconds(self) -> float | None:
        """Seconds from the serving attempt's start to its first content token."""
        if self._started.first_token_at is None:
            return None
        return self._started.first_token_at - self._served.started

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> Chunk:
        self._began = True
        return await anext(self._events)

    async def aclose(self) -> None:
        if self._began:
            await self._events.aclose()
            return
        self._began = True
        if self._started.iterator is not None:
            await close_quietly(self._started.iterator)
        self._served.release()

    async def _relay(self) -> AsyncIterator[Chunk]:
        # One part per entry that served: the committed one, then any continuations. The
        # per-chunk loop is the same for every stream; only a failure looks further.
        part: Served[Started] | None = self._served
        started = self._started
        usage = None
        try:
            while True:
                target = part.target
                if started.first_token_at is not None:
                    metrics.child(metrics.time_to_first_token, part.entry.provider, part.entry.model).observe(
                        started.first_token_at - part.started)
                for chunk in started.buffered:
                    usage = chunk.get("usage") or usage
                    if forward(chunk, self._include_usage):
                        chunk["model"] = target
                        yield chunk
                if started.iterator is None:
                    return
                while True:
                    try:
                        async with asyncio.timeout(settings.STREAM_IDLE_TIMEOUT):
                            chunk = await anext(started.iterator)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        error = errors.Timeout(f"{target} went silent for {settings.STREAM_IDLE_TIMEOUT:g} s "
                                               "mid-stream.")
                        break
                    except errors.ProviderError as exc:
                        error = exc
                        break
                    usage = chunk.get("usage") or usage
                    if forward(chunk, self._include_usage):
                        chunk["model"] = target
                        yield chunk
                failed = part.entry
                self._record_failure(failed, error)
                if self._continuation is None:
                    self.failure = error
                    yield failure_event(failed, error)
                    return
                await self._end(part, started, usage)
                part = None  # ended: its slot is free for a continuation on the same provider
                part = await self._continuation.resume(self._router, failed)
                if part is None:
                    self.failure = error
                    yield failure_event(failed, error)
                    return
                started = part.value
        finally:
            if part is not None:
                await self._end(part, started, usage)

    async def _end(self, part: Served[Started], started: Started, usage: dict | None) -> None:
        """Close one part's upstream, free its slot, record its latency and tokens."""
        if started.iterator is not None:
            await close_quietly(started.iterator)
        part.release()
        if self._continuation is not None:
            usage = self._continuation.transcript.usage
        if usage:
            self.usage = add_usage(self.usage, usage)
        self._router.finish(part, usage)

    def _record_failure(self, entry: Entry, error: errors.ProviderError) -> None:
        """A failure after the first token counts on the deployment's breaker like any other
        (before any continuation is tried)."""
        logger.warning("stream from %s failed after its first token: %s", entry.target, error.message)
        metrics.llm_errors.labels(entry.provider, entry.model, error.reason).inc()
        if error.breaker:
            self._router.breakers.record_failure(entry.provider, entry.model, "deployment",
                                                 f"{error.reason}: {error.message}"[:300])


def failure_event(entry: Entry, error: errors.ProviderError) -> Chunk:
    """The in-band error event that ends a committed stream: never a clean end."""
    return {"error": {"message": f"The stream from {entry.target} was cut short: {error.message}",
                      "type": error.type if error.type != "upstream_error" else "stream_error",
                      "code": error.reason, "param": None}}


# --- stream continuation (README#stream-continuation) -----------------------------------------

MAX_CONTINUATIONS = 2


class Transcript:
    """What a continuable stream has sent: its text, whether it carried tool calls, its
    ``id``, and usage (this part's own, and the sum of the parts before it).

    It sees every chunk as it leaves an upstream (``Recorded``) and makes a continued
    part's chunks further chunks of the same stream: the first part's ``id`` and
    ``created``, no second ``role``, usage summed over the parts.
    """

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tool_calls = False
        self.id: str | None = None
        self.created: int | None = None
        self.parts = 0  # continuations started
        self.prior: dict | None = None
        self.usage: dict | None = None

    def see(self, chunk: Chunk) -> None:
        if self.parts:
            if self.id is not None:
                chunk["id"], chunk["created"] = self.id, self.created
        elif self.id is None:
            self.id, self.created = chunk.get("id"), chunk.get("created")
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if not delta:
                continue
            if self.parts:
                delta.pop("role", None)
            if delta.get("content"):
                self.text.append(delta["content"])
            if delta.get("tool_calls"):
                self.tool_calls = True
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
            if self.prior:
                chunk["usage"] = add_usage(self.prior, usage)

    def next_part(self) -> None:
        if self.usage:
            self.prior = add_usage(self.prior, self.usage)
        self.usage = None
        self.parts += 1


class Recorded:
    """An upstream stream whose chunks a ``Transcript`` sees as they pass; closing it closes
    the upstream, even before its first chunk was asked for."""

    def __init__(self, inner: AsyncIterator[Chunk], transcript: Transcript):
        self._inner = inner
        self._transcript = transcript

    def __aiter__(self) -> Recorded:
        return self

    async def __anext__(self) -> Chunk:
        chunk = await anext(self._inner)
        self._transcript.see(chunk)
        return chunk

    async def aclose(self) -> None:
        await close_quietly(self._inner)


class Continuation:
    """A stream of an alias with ``stream_continuation``: the request and chain to continue
    it from, what it sent so far, and the entries a continuation already went to."""

    def __init__(self, body: dict, chain: tuple[Entry, ...], started: Started):
        self.body = body
        self.chain = chain
        self.tried: set[str] = set()
        self.transcript = Transcript()
        for chunk in started.buffered:
            self.transcript.see(chunk)
        if started.iterator is not None:
            started.iterator = Recorded(started.iterator, self.transcript)

    async def resume(self, router: StreamRouter, failed: Entry) -> Served[Started] | None:
        """The next part of the stream after ``failed`` broke it, or None: the stream
        carried tool calls, two continuations were spent, no entry can take it, or the one
        that did failed before its first token."""
        transcript = self.transcript
        if transcript.tool_calls or transcript.parts >= MAX_CONTINUATIONS:
            return None
        transcript.next_part()
        prefill = {"role": "assistant", "content": "".join(transcript.text)}
        body = {**self.body, "messages": [*self.body.get("messages", ()), prefill]}
        return await router.continue_stream(body, self.chain, failed, self.tried,
                                            lambda iterator: Recorded(iterator, transcript))


def add_usage(first: dict | None, second: dict) -> dict:
    """Two parts' usage as one (the final usage chunk sums all parts)."""
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {key: ((first or {}).get(key) or 0) + (second.get(key) or 0) for key in keys}


def forward(chunk: Chunk, include_usage: bool) -> bool:
    """Usage-only chunks go out only when the client asked (stream_options.include_usage)."""
    if chunk.get("choices"):
        if not include_usage:
            chunk.pop("usage", None)
        return True
    return include_usage and bool(chunk.get("usage"))


async def close_quietly(iterator: AsyncIterator[Chunk]) -> None:
    """Close an upstream stream; a failure to close is not the caller's problem."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            logger.debug("closing an upstream stream raised", exc_info=True)
