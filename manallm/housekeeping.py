"""Periodic database chores the long-running prober runs (README#commands).

Some apps keep data that must be trimmed now and then (the request log's retention).
Serving processes should not each do it, and the prober (``manage.py probe_providers``)
already runs as one long-lived process per deployment, so it runs these chores. The
prober lives in ``health``, which may not import the apps that own the chores, so the
apps register them here, in the core, from their ``AppConfig.ready()`` and the prober's
command runs whatever is registered (docs/architecture.md#processes).
"""
import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .background import run_db

logger = logging.getLogger("manallm.housekeeping")


@dataclass(frozen=True)
class Chore:
    name: str
    every: float  # seconds between runs
    run: Callable[[], object]  # sync, runs on the DB thread


_chores: dict[str, Chore] = {}


def every(seconds: float, name: str, fn: Callable[[], object]) -> None:
    """Run ``fn`` (sync, database work) every ``seconds`` in the prober (idempotent per name)."""
    _chores[name] = Chore(name, seconds, fn)


def chores() -> list[Chore]:
    return list(_chores.values())


async def run_once(chore: Chore) -> None:
    """One run of ``chore`` on the DB thread; a failure is logged, never raised (the next
    run tries again)."""
    try:
        result = await run_db(chore.run)
        logger.info("housekeeping %s: %s", chore.name, result)
    except Exception as exc:
        logger.warning("housekeeping %s failed (tried again in %g s): %s", chore.name, chore.every, exc)


async def run_forever(clock: Callable[[], float] = time.monotonic) -> None:
    """Run every chore now, then each on its own period, until cancelled."""
    due = {chore.name: clock() for chore in chores()}
    while True:
        for chore in chores():
            if due.setdefault(chore.name, clock()) <= clock():
                await run_once(chore)
                due[chore.name] = clock() + chore.every
        wait = min(due.values(), default=clock() + 60) - clock()
        await asyncio.sleep(max(wait, 1.0))
