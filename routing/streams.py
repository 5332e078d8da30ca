"""A committed stream (docs/architecture.md#routing, "Streams"): from its first content token to ``[DONE]``.

``first_token`` reads an upstream stream until its first content token, so the router
can still fall over before anything is sent; ``Relay`` is what the caller iterates once
an entry is committed: the buffered chunks, then the rest under STREAM_IDLE_TIMEOUT. A
failure after that point ends the stream with an ``{"error": …}`` event (never another
provider's text, never a clean end), counted on the deployment's breaker.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings

from manallm import metrics
from providers import errors
from providers.base import has_content

if TYPE_CHECKING:
    from .router import Router, Served

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
    """

    def __init__(self, router: Router, served: Served[Started], include_usage: bool):
        self._router = router
        self._served = served
        self._started = served.value
        self._include_usage = include_usage
        self._events = self._relay()
        self._began = False

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
        served, started = self._served, self._started
        target = served.target
        usage = None
        if started.first_token_at is not None:
            metrics.time_to_first_token.labels(served.entry.provider, served.entry.model).observe(
                started.first_token_at - served.started)
        try:
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
                    break
                except TimeoutError:
                    error = errors.Timeout(f"{target} went silent for {settings.STREAM_IDLE_TIMEOUT:g} s mid-stream.")
                    yield self._failed(error)
                    return
                except errors.ProviderError as error:
                    yield self._failed(error)
                    return
                usage = chunk.get("usage") or usage
                if forward(chunk, self._include_usage):
                    chunk["model"] = target
                    yield chunk
        finally:
            if started.iterator is not None:
                await close_quietly(started.iterator)
            served.release()
            self._router.finish(served, usage)

    def _failed(self, error: errors.ProviderError) -> Chunk:
        """The in-band error event that ends a committed stream; the failure counts on the
        deployment's breaker like any other."""
        entry = self._served.entry
        logger.warning("stream from %s failed after its first token: %s", entry.target, error.message)
        metrics.llm_errors.labels(entry.provider, entry.model, error.reason).inc()
        if error.breaker:
            self._router.breakers.record_failure(entry.provider, entry.model, "deployment",
                                                 f"{error.reason}: {error.message}"[:300])
        return {"error": {"message": f"The stream from {entry.target} was cut short: {error.message}",
                          "type": error.type if error.type != "upstream_error" else "stream_error",
                          "code": error.reason, "param": None}}


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
