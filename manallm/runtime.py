"""What each server process runs beside its requests.

The request path never touches the database in steady state: alias and breaker state
live in memory. One background task per process re-reads what other processes wrote
(every STATE_POLL_INTERVAL), and every database call made off the request path goes
through one dedicated thread, so it neither blocks the event loop nor competes with
Django's own sync thread.

With REDIS_URL set, a process that commits a change also announces it over the channel
layer, and every process re-reads at once instead of at its next tick. The poll stays
the guarantee: an announcement lost to a Redis outage only costs a tick.
"""
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections, connection

logger = logging.getLogger("manallm.runtime")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manallm-db")
_state = {"loop": None, "ready": None, "task": None, "listener": None}
STATE_GROUP = "manallm.state"
# channels_redis forgets group members after a day; rejoin well before that.
REJOIN_SECONDS = 600


async def run_db(fn, *args, **kwargs):
    """Run a database function on the dedicated DB thread."""
    return await asyncio.get_running_loop().run_in_executor(_executor, _call_db, fn, args, kwargs)


def _call_db(fn, args, kwargs):
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    except Exception:
        # A broken connection must not stick to the thread: reconnect next time.
        connection.close()
        raise


def _sources():
    from health.board import breakers
    from routing.table import aliases

    return (aliases, breakers)


async def ensure_started():
    """Load state once and start the poller in this event loop (idempotent, cheap).

    Concurrent first requests all wait for the one load; it runs in a task of its own
    so a first client that goes away cannot cancel it half-way.
    """
    loop = asyncio.get_running_loop()
    if _state["loop"] is not loop:
        _state["loop"] = loop
        _state["ready"] = loop.create_task(_start(loop))
    ready = _state["ready"]
    if not ready.done():
        await asyncio.shield(ready)


async def _start(loop):
    for source in _sources():
        try:
            await run_db(source.load)
        except Exception:
            logger.exception("could not load %s from the database; serving what is in memory", source)
    from health.board import breakers
    from providers import registry

    from . import metrics

    metrics.install(breakers, registry.configured())
    _state["task"] = loop.create_task(_poll_forever())
    if settings.REDIS_URL:
        _state["listener"] = loop.create_task(_listen_forever())


async def _poll_forever():
    while True:
        await asyncio.sleep(settings.STATE_POLL_INTERVAL)
        await poll_once()


async def poll_once():
    for source in _sources():
        try:
            await run_db(source.poll)
        except Exception as exc:
            logger.warning("could not refresh %s from the database: %s", source, exc)


async def _listen_forever():
    from channels.layers import get_channel_layer

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


async def announce():
    """Tell every process that shared state changed (no-op without REDIS_URL)."""
    if not settings.REDIS_URL:
        return
    from channels.layers import get_channel_layer

    try:
        await get_channel_layer().group_send(STATE_GROUP, {"type": "state.changed"})
    except Exception as exc:
        logger.warning("could not announce a state change over the channel layer: %s", exc)


def announce_from_sync():
    """``announce`` for sync code (an on_commit hook, a management command)."""
    if settings.REDIS_URL:
        from asgiref.sync import async_to_sync

        async_to_sync(announce)()


def stop():
    for name in ("ready", "task", "listener"):
        if _state[name] is not None:
            _state[name].cancel()
    _state.update(loop=None, ready=None, task=None, listener=None)


def reload_aliases_file():
    """SIGHUP: re-import ALIASES_FILE; a bad file changes nothing and is logged."""
    from routing import aliasfile
    from routing.validators import AliasError

    path = settings.ALIASES_FILE
    try:
        result = aliasfile.sync(path)
    except AliasError as exc:
        logger.error("SIGHUP: not reloading %s: %s; aliases unchanged", path, exc)
        return
    except Exception:
        logger.exception("SIGHUP: reloading %s failed; aliases unchanged", path)
        return
    finally:
        connection.close()
    from routing.table import aliases

    aliases.invalidate()
    connection.close()
    logger.info("SIGHUP: reloaded %s: %s", path, result.summary())


def install_sighup():
    """Re-import the aliases file on SIGHUP, in a thread: a signal handler must not do I/O."""
    import signal
    import threading

    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        threading.Thread(target=reload_aliases_file, name="manallm-sighup", daemon=True).start()

    signal.signal(signal.SIGHUP, handler)
