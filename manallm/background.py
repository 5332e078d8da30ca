"""What each server process runs beside its requests: the bottom layer the apps build on.

The request path never touches the database in steady state: alias and breaker state
live in memory, in *state sources* the apps register here from their ``AppConfig.ready()``
(this module imports no app). On a process's first request (``ensure_started``, called
by the ASGI handler) every source is loaded once and one background task re-reads what
other processes wrote (``poll`` every STATE_POLL_INTERVAL). Every database call made off
the request path goes through one dedicated thread (``run_db``), so it neither blocks
the event loop nor competes with Django's own sync thread.

With REDIS_URL set, a process that commits a change also announces it over the channel
layer, and every process re-reads at once instead of at its next tick. The poll stays
the guarantee: an announcement lost to a Redis outage only costs a tick. Announcements
are fire-and-forget with a short timeout (``ANNOUNCE_TIMEOUT``), so a down or hung Redis
never holds up a request or a management write (docs/architecture.md#where-state-lives).

A database outage stops none of this: a source that could not load is loaded by the
poller once the database answers, and ``is_ready`` (``GET /ready``) says whether every
source holds its state yet.
"""
import asyncio
import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Protocol, TypeVar

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection

logger = logging.getLogger("manallm.background")

T = TypeVar("T")
STATE_GROUP = "manallm.state"
# channels_redis forgets group members after a day; rejoin well before that.
REJOIN_SECONDS = 600
# How long one announcement may wait on Redis before it is given up (the poll covers it).
ANNOUNCE_TIMEOUT = 0.5


class StateSource(Protocol):
    """In-memory state kept in step with the database (both methods are sync, run on the DB thread)."""

    def load(self) -> None:
        """Read everything (once, when the process starts serving)."""

    def poll(self) -> None:
        """Catch up with what other processes wrote (cheap when nothing changed)."""


_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manallm-db")
_sources: list[StateSource] = []
_start_hooks: list[Callable[[], None]] = []
_shutdown_hooks: list[Callable[[], Awaitable[None]]] = []
_state: dict[str, Any] = {"loop": None, "ready": None, "task": None, "listener": None}
_loaded: set[StateSource] = set()  # the sources that hold their state (loaded once)
_announcing: set[asyncio.Task] = set()  # fire-and-forget announcements still running


def register(source: StateSource) -> None:
    """Keep ``source`` loaded and polled in every serving process (idempotent)."""
    if source not in _sources:
        _sources.append(source)


def on_start(hook: Callable[[], None]) -> None:
    """Run ``hook`` (sync, cheap, in the event loop) once the sources are loaded (idempotent)."""
    if hook not in _start_hooks:
        _start_hooks.append(hook)


def on_shutdown(hook: Callable[[], Awaitable[None]]) -> None:
    """Await ``hook`` when the server stops gracefully, after its last request: write what
    this process still holds in memory (idempotent; see ``shutdown``)."""
    if hook not in _shutdown_hooks:
        _shutdown_hooks.append(hook)


async def shutdown() -> None:
    """A graceful stop's flush (manallm.serve): the shutdown hooks, then every database
    write already queued on the DB thread (it runs them in order), then the tasks stop.
    A hook that fails is logged; the others still run."""
    for hook in _shutdown_hooks:
        try:
            await hook()
        except Exception:
            logger.exception("shutdown hook %s failed", getattr(hook, "__qualname__", hook))
    await run_db(lambda: None)
    stop()


async def run_db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a database function on the dedicated DB thread."""
    return await asyncio.get_running_loop().run_in_executor(_executor, _call_db, fn, args, kwargs)


def _call_db(fn, args, kwargs):
    # With CONN_HEALTH_CHECKS this also makes the next query check the pooled connection
    # first, so one the database killed (a restart) is replaced instead of failing.
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    except Exception:
        # A broken connection must not stick to the thread: reconnect next time.
        connection.close()
        raise


async def ensure_started() -> None:
    """Load state once and start the poller in this event loop (idempotent, cheap).

    Concurrent first requests all wait for the one load; it runs in a task of its own
    so a first client that goes away cannot cancel it half-way. It never raises: a
    source that cannot load is logged and served from memory.
    """
    loop = asyncio.get_running_loop()
    if _state["loop"] is not loop:
        _state["loop"] = loop
        _state["ready"] = loop.create_task(_start(loop))
    ready = _state["ready"]
    if not ready.done():
        await asyncio.shield(ready)


def is_ready() -> bool:
    """True once every registered source holds its state (``GET /ready``)."""
    return not waiting_for()


def waiting_for() -> list[str]:
    """The sources that have not loaded yet (all of them before the first request)."""
    return [str(source) for source in _sources if source not in _loaded]


async def _load(source: StateSource) -> None:
    await run_db(source.load)
    _loaded.add(source)


async def _start(loop):
    for source in _sources:
        try:
            await _load(source)
        except Exception as exc:
            logger.warning("could not load %s from the database (%s); it loads when the database answers",
                           source, exc)
    for hook in _start_hooks:
        try:
            hook()
        except Exception:
            logger.exception("start hook %s failed", getattr(hook, "__qualname__", hook))
    # Everything loaded so far (Django, the apps, the SDKs, the state) lives as long as the
    # process: move it out of the collector's sight. A full collection otherwise walks it
    # all, a 40-70 ms pause of every request in flight, a few times a minute under load.
    gc.collect()
    gc.freeze()
    _state["task"] = loop.create_task(_poll_forever())
    if settings.REDIS_URL:
        _state["listener"] = loop.create_task(_listen_forever())


async def _poll_forever():
    while True:
        await asyncio.sleep(settings.STATE_POLL_INTERVAL)
        await poll_once()


async def poll_once() -> None:
    """Let every source catch up with the database now (loading one that never loaded)."""
    for source in _sources:
        try:
            if source in _loaded:
                await run_db(source.poll)
            else:
                await _load(source)
        except Exception as exc:
            logger.warning("could not refresh %s from the database: %s", source, exc)


async def _listen_forever():
    layer = get_channel_layer()
    channel = None
    while True:
        try:
            if channel is None:
                channel = await layer.new_channel()
            await layer.group_add(STATE_GROUP, channel)
            try:
                async with asyncio.timeout(REJOIN_SECONDS):
                    while True:
                        await layer.receive(channel)
                        await poll_once()
            except TimeoutError:
                continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("channel layer unavailable (%s); relying on polling", exc)
            await asyncio.sleep(settings.STATE_POLL_INTERVAL * 4)


async def announce() -> None:
    """Tell every process that shared state changed (no-op without REDIS_URL).

    Waits at most ANNOUNCE_TIMEOUT and never raises: a lost announcement costs a poll tick.
    """
    if not settings.REDIS_URL:
        return
    try:
        async with asyncio.timeout(ANNOUNCE_TIMEOUT):
            await get_channel_layer().group_send(STATE_GROUP, {"type": "state.changed"})
    except Exception as exc:
        logger.warning("could not announce a state change over the channel layer: %r", exc)


def announce_from_sync() -> None:
    """``announce`` from any thread, without waiting for it (an on_commit hook, the DB thread).

    In a serving process the announcement runs on its event loop and the caller moves
    on at once; elsewhere (a management command) it is sent here, bounded by
    ANNOUNCE_TIMEOUT.
    """
    if not settings.REDIS_URL:
        return
    loop = _state["loop"]
    if loop is None or loop.is_closed() or not loop.is_running():
        async_to_sync(announce)()
    else:
        loop.call_soon_threadsafe(_spawn_announcement)


def _spawn_announcement() -> None:
    task = asyncio.get_running_loop().create_task(announce())
    _announcing.add(task)  # a task nothing refers to may be collected before it ran
    task.add_done_callback(_announcing.discard)


def stop() -> None:
    """Cancel this process's background tasks; the next request starts them again (tests)."""
    for name in ("ready", "task", "listener"):
        if _state[name] is not None:
            _state[name].cancel()
    _state.update(loop=None, ready=None, task=None, listener=None)
    _loaded.clear()
