"""The probe loop behind ``manage.py probe_providers`` (README#commands, docs/architecture.md#routing).

Each tick pings every configured provider concurrently (``provider.probe()`` under a
timeout) and records the results on the same breaker board the workers use, so counts
continue from the database and every worker sees a trip within a poll interval:

- a failure (an exception, or no answer within ``timeout``) counts against the
  *provider* breaker (``record_failure(name, "", "provider", reason)``);
- a success closes the *provider* breaker only and persists ``last_check`` (so the
  health API shows when the provider was last seen alive). Deployment breakers are left
  alone: a provider answering its model list says nothing about one overloaded model,
  whose breaker half-opens on its own and is closed by a real call.

One failing or hanging probe never stops the loop; SIGTERM / SIGINT stop it cleanly
(the running tick is cancelled, pending writes are flushed, HTTP clients closed).
"""
import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from manallm.background import run_db
from providers import registry
from providers.base import ProviderAPI

from .board import breakers

logger = logging.getLogger("manallm.health")


@dataclass(frozen=True)
class ProbeResult:
    provider: str
    ok: bool
    seconds: float
    error: str | None = None

    def summary(self) -> str:
        if self.ok:
            return f"{self.provider}: ok ({self.seconds * 1000:.0f} ms)"
        return f"{self.provider}: failed after {self.seconds * 1000:.0f} ms: {self.error}"


async def probe_one(name: str, provider: ProviderAPI, timeout: float) -> ProbeResult:
    started = time.monotonic()
    try:
        await asyncio.wait_for(provider.probe(), timeout)
    except asyncio.CancelledError:
        raise
    except (asyncio.TimeoutError, TimeoutError):
        return ProbeResult(name, False, time.monotonic() - started, f"timeout: no answer within {timeout:g}s")
    except Exception as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        message = str(getattr(exc, "message", None) or exc) or type(exc).__name__
        return ProbeResult(name, False, time.monotonic() - started, f"{reason}: {message}")
    return ProbeResult(name, True, time.monotonic() - started)


async def tick(timeout: float) -> list[ProbeResult]:
    """Probe every configured provider once and record the results; -> [ProbeResult]."""
    await _poll()  # see resets and trips written since the last tick
    providers = registry.configured()
    results = await asyncio.gather(*(probe_one(name, p, timeout) for name, p in providers.items()))
    for result in results:
        if result.ok:
            breakers.record_success(result.provider, "", touch=True)
        else:
            breakers.record_failure(result.provider, "", "provider", f"probe failed: {result.error}")
    await breakers.flush()
    return results


async def _poll():
    try:
        await run_db(breakers.poll)
    except Exception as exc:
        logger.warning("could not read breaker state from the database: %s", exc)


def log_result(result: ProbeResult) -> None:
    """Loop mode: a failed probe is worth an info line, a passing one only a debug line
    (transitions are logged by the board's listener either way)."""
    logger.log(logging.DEBUG if result.ok else logging.INFO, "probe %s", result.summary())


async def main(*, once: bool = False, interval: float = 30.0, timeout: float = 3.0,
               report: Callable[[str], None] | None = None) -> None:
    """Run the loop until stopped (or one tick with ``once``). ``report(result)`` gets
    each ProbeResult of each tick (default: ``log_result``)."""
    report = report or log_result
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        try:
            await run_db(breakers.load)
        except Exception as exc:
            logger.warning("could not load breaker state from the database: %s", exc)
        while not stop.is_set():
            started = time.monotonic()
            current = asyncio.ensure_future(tick(timeout))
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({current, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not current.done():
                current.cancel()
                await asyncio.gather(current, return_exceptions=True)
                break
            try:
                for result in current.result():
                    report(result)
            except Exception:
                logger.exception("probe tick failed; the loop goes on")
            if once:
                break
            try:
                await asyncio.wait_for(stop.wait(), max(interval - (time.monotonic() - started), 0.0))
            except asyncio.TimeoutError:
                pass
    finally:
        await breakers.flush()
        await registry.aclose_all()
        for signum in installed:
            loop.remove_signal_handler(signum)
    logger.info("probe loop stopped")
