"""Where the response cache keeps answers (README#response-cache): a per-process LRU
bounded by bytes, or Redis shared by every replica.

Both take and give opaque ``bytes`` under a hex key: ``get`` is awaited on the request
path, ``put`` never is (the LRU writes at once, Redis in a task of its own). A Redis
fault is never the request's problem: ``get`` raises ``Unavailable`` within
``TIMEOUT`` (the caller counts a bypass), and after a fault the backend answers
``Unavailable`` at once for ``RETRY_AFTER`` seconds instead of making every request
wait out the timeout again; the outage and the recovery are logged once each.

Why redis-py's asyncio client and not ``django.core.cache``'s Redis backend: Django's
``aget``/``aset`` are ``sync_to_async`` wrappers (a hop to the one sync thread per call,
and a pickle), measured by ``bench/cache_redis_choice.py`` (README#response-cache).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from providers.transport import ClientHolder

logger = logging.getLogger("manallm.cache")

TIMEOUT = 0.05  # seconds a Redis call may take before the request goes on without the cache
RETRY_AFTER = 1.0  # seconds a faulty Redis is left alone before the next call tries it again
ENTRY_OVERHEAD = 200  # bytes an LRU entry costs beyond its key and value (dict slot, tuple, objects)


class Unavailable(Exception):
    """The backend could not answer in time: a bypass, never an error."""


class Backend(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, ttl: int) -> None: ...


class LRUBackend:
    """Answers in this process's memory: at most ``max_bytes`` (keys, values and a fixed
    per-entry overhead), least recently used first out, each entry until its TTL."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.size = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, value: bytes, ttl: int) -> None:
        cost = _cost(key, value)
        if cost > self.max_bytes:
            return  # would evict everything and still not fit
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl, value)
        self.size += cost
        while self.size > self.max_bytes:
            old_key, (_, old_value) = self._entries.popitem(last=False)
            self.size -= _cost(old_key, old_value)

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.size -= _cost(key, value)


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD


class RedisBackend:
    """Answers in Redis under ``manallm:cache:<key>`` with Redis's own expiry, shared by
    every process and replica; one client per event loop (providers.transport.ClientHolder)."""

    PREFIX = "manallm:cache:"

    def __init__(self, url: str, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._down_until = 0.0  # while clock() is below it, the last call failed: do not ask
        self._tasks: set[asyncio.Task] = set()
        # No retries of its own: one attempt, bounded by TIMEOUT, then a bypass.
        self._clients = ClientHolder(
            "cache redis", lambda: Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=TIMEOUT),
            lambda client: client.aclose(), lambda client: False)

    async def get(self, key: str) -> bytes | None:
        if self._clock() < self._down_until:
            raise Unavailable("redis was unavailable a moment ago")
        try:
            async with asyncio.timeout(TIMEOUT):
                value = await self._clients.get().get(self.PREFIX + key)
        except Exception as exc:
            self._fault(exc)
            raise Unavailable(str(exc)) from exc
        self._up()
        return value

    def put(self, key: str, value: bytes, ttl: int) -> None:
        if self._clock() < self._down_until:
            return
        task = asyncio.get_running_loop().create_task(self._set(key, value, ttl))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _set(self, key: str, value: bytes, ttl: int) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                await self._clients.get().set(self.PREFIX + key, value, ex=ttl)
        except Exception as exc:
            self._fault(exc)
        else:
            self._up()

    def _fault(self, exc: Exception) -> None:
        if not self._down_until:
            logger.warning("response cache: redis unavailable (%s); requests bypass the cache until it answers",
                           type(exc).__name__ if isinstance(exc, TimeoutError) else exc)
        self._down_until = self._clock() + RETRY_AFTER

    def _up(self) -> None:
        if self._down_until:
            self._down_until = 0.0
            logger.warning("response cache: redis answers again")
