"""One OpenAI request as the gateway's bookkeeping sees it (docs/architecture.md#one-request-s-bookkeeping).

Usage attribution (consumers), the request log and the per-consumer metrics all need
the same facts about a finished request: who asked, for what, what served it, how it
ended, its tokens, whether the cache answered. The OpenAI views fill one ``Exchange``
per chat or embeddings request and ``finish`` it once — when the answer is built, or
for a stream when its last event went out — and the apps that keep those records
subscribe with ``on_finish`` from their ``AppConfig.ready()`` (this core module imports
no app). A listener runs on the event loop on the request path: it must only append to
memory (the writes happen in the background) and it never fails the request.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger("manallm.exchange")

Listener = Callable[["Exchange"], None]
_listeners: list[Listener] = []


@dataclass(slots=True, eq=False)
class Exchange:
    """What one chat or embeddings request asked for and how it ended."""

    request_id: str
    consumer: str  # the consumer's name: a consumer of §9, or built-in 'env', 'admin', 'anonymous'
    kind: str  # 'chat' or 'embeddings'
    streaming: bool = False
    requested: str = ""  # the model as asked, normalised: 'mana/<class>' or 'provider/model'
    alias: str | None = None
    started: float = field(default_factory=time.perf_counter)
    target: str | None = None  # the entry that served
    attempts: list[dict[str, str]] = field(default_factory=list)  # [{"model", "reason"}] before the serving one
    status: int = 200
    error_type: str | None = None
    first_token_seconds: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache: str | None = None  # 'hit', 'miss', 'bypass' on a caching alias; None otherwise
    limited: str | None = None  # the consumer limit that refused it: 'rpm', 'tpm', 'concurrency', 'budget'
    finished: bool = False
    # What a gate (consumers' admission) must undo when the request ends: concurrency slots.
    on_end: list[Callable[[Exchange], None]] = field(default_factory=list)

    @property
    def latency(self) -> float:
        return time.perf_counter() - self.started

    def add_usage(self, usage: dict | None) -> None:
        if usage:
            self.prompt_tokens += usage.get("prompt_tokens") or 0
            self.completion_tokens += usage.get("completion_tokens") or 0

    def finish(self) -> None:
        """Hand the request to every listener, once; nothing here may fail the request."""
        if self.finished:
            return
        self.finished = True
        for hook in self.on_end:
            try:
                hook(self)
            except Exception:
                logger.exception("a request's end hook failed")
        for listener in _listeners:
            try:
                listener(self)
            except Exception:
                logger.exception("a request listener failed")


def on_finish(listener: Listener) -> None:
    """Call ``listener`` (sync, cheap, memory only) with every finished Exchange (idempotent)."""
    if listener not in _listeners:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)
