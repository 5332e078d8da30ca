"""The in-memory breaker board every process keeps (docs/architecture.md#routing), and its persistence.

The router reads and records breaker state on the hot path through the module singleton
``breakers``: no database query there. A state change is written to the ``Breaker`` row
in the background (through ``manallm.background.run_db``, fire-and-forget: the request never
waits for it). A write the database refuses (an outage) is held and written by the next
``poll()`` that reaches it, so nothing seen in memory is lost. An operator reset is the
other way round: a management write, committed first and applied in memory after, so a
reset the database refused changes nothing anywhere. State written by other workers or by
``probe_providers`` arrives through ``poll()`` (rows read and written by ``health.rows``), which manallm.background's poller calls on its DB thread
every STATE_POLL_INTERVAL; a row replaces this process's copy only when its
``updated_at`` is newer, so a local change whose write is still pending is not reverted.

Threading: the event loop thread reads and records; the DB thread merges rows in
``poll()``; admin actions record from a sync worker thread. Breaker values are immutable
and swapped in a dict under a lock held only for the read-modify-write (no I/O under
it); readers take no lock.

Listeners (``add_listener``) get a ``Transition`` on every status change, local or
arriving from the database. They run in the thread that saw the change (the event loop,
the DB thread for polled changes, an admin thread), so they must be cheap and
thread-safe; one that raises is logged and ignored.
"""
import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.conf import settings

from manallm.background import announce, announce_from_sync, run_db

from . import rows
from .breaker import HALF_OPEN, HEALTHY, UNHEALTHY, Breaker, breaker_key, clean_error

logger = logging.getLogger("manallm.health")

SKIP_REASON = "cache-unhealthy"


@dataclass(frozen=True)
class Transition:
    key: str
    provider: str
    model: str
    old_status: str
    new_status: str
    error: str | None = None
    unhealthy_until: float | None = None
    source: str = "local"  # "local" (this process recorded it) or "db" (read from another process's write)


class BreakerBoard:
    def __init__(self, clock=time.time, log_transitions=True):
        self.clock = clock
        self._breakers = {}  # key -> breaker.Breaker (immutable; swapped, never mutated)
        self._lock = threading.Lock()
        self._listeners = []
        self._pending = set()
        self._unwritten = set()  # keys whose last write the database refused (held for poll())
        self._trials = {}  # key -> until when this process's half-open trial call holds it
        if log_transitions:
            self.add_listener(log_transition)

    def __str__(self):
        return "breakers"

    # --- reads (hot path: no lock, no database) ----------------------------------------

    def get(self, provider: str, model: str = "") -> Breaker | None:
        """The breaker value, or None when this process has no state for it (closed)."""
        return self._breakers.get(breaker_key(provider, model))

    def status(self, provider: str, model: str = "") -> str:
        breaker = self.get(provider, model)
        return HEALTHY if breaker is None else breaker.status(self.clock())

    def claim(self, provider: str, model: str) -> str | None:
        """May a call to this deployment go ahead now? None (yes) or ``"cache-unhealthy"``.

        Not a pure read: when a half-open breaker is what lets the call through, the call
        claims that breaker's trial, so concurrent callers skip the entry meanwhile.

        Half-open lets one call through, the trial, whose recorded result closes or
        re-opens the breaker; until then (or until the trial's lease of
        FIRST_TOKEN_TIMEOUT runs out, for a call that never reports) the others skip it.
        """
        return SKIP_REASON if self.admit(provider, model, claim=True) == UNHEALTHY else None

    def peek(self, provider: str, model: str = "") -> str:
        """What ``claim`` would decide now, claiming nothing (the route preview): HEALTHY
        (closed), HALF_OPEN (a trial call would be let through) or UNHEALTHY (skipped:
        open, or its trial already out)."""
        return self.admit(provider, model, claim=False)

    def admit(self, provider: str, model: str, *, claim: bool) -> str:
        """The breaker verdict on a call to ``provider/model`` (both its breakers), shared
        by ``claim`` and ``peek``: HEALTHY, HALF_OPEN or UNHEALTHY. With ``claim`` a
        half-open verdict takes the trial."""
        now = self.clock()
        keys = (provider, f"{provider}/{model}") if model else (provider,)
        half_open = []
        for key in keys:
            breaker = self._breakers.get(key)
            if breaker is None or breaker.unhealthy_until is None:
                continue
            if now < breaker.unhealthy_until or self._trials.get(key, 0) > now:
                return UNHEALTHY
            half_open.append(key)
        if not half_open:
            return HEALTHY
        if claim:
            for key in half_open:
                self._trials[key] = now + settings.FIRST_TOKEN_TIMEOUT
        return HALF_OPEN

    def _end_trials(self, provider, model):
        self._trials.pop(provider, None)
        if model:
            self._trials.pop(f"{provider}/{model}", None)

    def retry_after(self, entries: Iterable[tuple[str, str]]) -> float | None:
        """Seconds until the first of these (provider, model) entries half-opens, or None.

        An entry becomes usable when both its provider and its deployment breaker allow
        calls; entries not held by an open breaker are ignored.
        """
        now = self.clock()
        first = None
        for provider, model in entries:
            until = None
            for key in (provider, breaker_key(provider, model)):
                breaker = self._breakers.get(key)
                if breaker is not None and breaker.status(now) == UNHEALTHY:
                    until = breaker.unhealthy_until if until is None else max(until, breaker.unhealthy_until)
            if until is not None and (first is None or until < first):
                first = until
        return None if first is None else max(first - now, 0.0)

    def snapshot(self) -> dict[str, dict]:
        """{provider: {status, consecutive_failures, last_error, last_check_unix,
        unhealthy_until_unix, "models": {model: {same fields}}}} for every provider this
        process has state for (a provider with only deployment state shows a closed
        provider breaker)."""
        now = self.clock()
        with self._lock:
            values = list(self._breakers.values())
        result = {}
        for breaker in sorted(values, key=lambda b: (b.provider, b.model)):
            entry = result.get(breaker.provider)
            if entry is None:
                entry = result[breaker.provider] = {**Breaker.new(breaker.provider).as_dict(now), "models": {}}
            if breaker.model:
                entry["models"][breaker.model] = breaker.as_dict(now)
            else:
                entry.update(breaker.as_dict(now))
        return result

    def entry(self, provider: str, snapshot: dict[str, dict] | None = None) -> dict:
        """One provider's snapshot entry (a closed, empty one when there is no state),
        from ``snapshot`` when the caller already took one."""
        found = (self.snapshot() if snapshot is None else snapshot).get(provider)
        return found or {**Breaker.new(provider).as_dict(self.clock()), "models": {}}

    # --- writes (hot path: memory now, database in the background) --------------------

    def record_success(self, provider: str, model: str = "", *, touch: bool = False) -> None:
        """A call to ``provider/model`` succeeded: close the deployment breaker and the
        provider's. ``model=""`` closes the provider breaker only (the prober). ``touch``
        persists ``last_check`` even when nothing else changed (the prober's checks)."""
        now = self.clock()
        self._end_trials(provider, model)
        keys = [(provider, model), (provider, "")] if model else [(provider, "")]
        for p, m in keys:
            current = self._breakers.get(breaker_key(p, m))
            if not touch and (current is None or current.is_pristine()):
                continue  # fast path: nothing to change, nothing to write
            self._apply(p, m, now, (lambda b: b.touch(now)) if touch else (lambda b: b.record_success(now)))

    def record_failure(self, provider: str, model: str, level: str | None, error_text: str) -> None:
        """A failed attempt. ``level`` is ProviderError.breaker: ``"provider"`` counts
        against the provider's breaker, ``"deployment"`` against ``provider/model``,
        None against none (it still ends a half-open trial: the call has an answer)."""
        self._end_trials(provider, model)
        if level not in ("provider", "deployment"):
            return
        if level == "provider" or not model:
            model = ""
        now = self.clock()
        threshold = settings.BREAKER_FAILURE_THRESHOLD
        backoff = settings.BREAKER_BACKOFF_SECONDS
        text = clean_error(error_text, _secrets())
        self._apply(provider, model, now, lambda b: b.record_failure(now, text, threshold, backoff), error=text)

    def reset(self, provider: str) -> None:
        """Close the provider's breaker and all its deployments' (operator reset).

        Committed first (rows this process has not polled yet are closed too), then
        applied in memory and announced; a database error propagates before anything
        changed (the API answers 503).
        """
        self._reset({"provider": provider}, lambda b: b.provider == provider)

    def reset_keys(self, keys: Iterable[str]) -> None:
        """Close exactly these breakers (the admin action); committed first, as reset."""
        keys = set(keys)
        self._reset({"key__in": sorted(keys)}, lambda b: b.key in keys)

    def _reset(self, filters, selects):
        now = self.clock()
        rows.reset_rows(filters, now)
        with self._lock:
            keys = [key for key, b in self._breakers.items() if selects(b)]
            self._unwritten.difference_update(keys)  # the reset supersedes a held write
        for key in keys:  # already committed: applied in memory, not written again
            breaker = self._breakers.get(key)
            if breaker is not None:
                self._apply(breaker.provider, breaker.model, now, lambda b: b.close(now), persist=False)
        announce_from_sync()

    def _apply(self, provider, model, now, change, error=None, persist=True):
        key = breaker_key(provider, model)
        with self._lock:
            old = self._breakers.get(key) or Breaker.new(provider, model)
            new, changed = change(old)
            if not changed:
                return
            self._breakers[key] = new
        if persist:
            self._schedule(rows.write_row, new)
        old_status, new_status = old.status(now), new.status(now)
        if old_status != new_status:
            self._emit(Transition(key, provider, model, old_status, new_status,
                                  error if new_status != HEALTHY else None, new.unhealthy_until))

    # --- persistence ----------------------------------------------------------------

    def _schedule(self, fn, *args):
        """Run a DB write: in the background on the DB thread when an event loop runs in
        this thread, synchronously otherwise. Never raises: a refused write is held."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._write_now(fn, *args)
            return
        task = loop.create_task(self._write_in_background(fn, *args))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _write_now(self, fn, state):
        try:
            fn(state)
        except Exception as exc:
            self._hold(state, exc)
            return
        announce_from_sync()

    async def _write_in_background(self, fn, state):
        try:
            await run_db(fn, state)
        except Exception as exc:
            self._hold(state, exc)
            return
        await announce()

    def _hold(self, state, exc):
        logger.warning("could not persist breaker state of %s (held until the database answers): %s",
                       state.key, exc)
        with self._lock:
            self._unwritten.add(state.key)

    def _write_held(self):
        """Write the breakers whose last write failed (their current value); sync, DB thread."""
        with self._lock:
            held, self._unwritten = self._unwritten, set()
        states = [state for state in map(self._breakers.get, held) if state is not None]
        for i, state in enumerate(states):
            try:
                rows.write_row(state)
            except Exception:
                with self._lock:
                    self._unwritten.update(state.key for state in states[i:])
                raise
        if states:
            logger.info("wrote %d breaker state(s) held during a database outage", len(states))
            announce_from_sync()

    async def flush(self) -> None:
        """Wait for every pending write scheduled from this event loop."""
        loop = asyncio.get_running_loop()
        while True:
            tasks = [task for task in self._pending if task.get_loop() is loop]
            # Tasks of a loop that is gone (tests) will never run: forget them.
            self._pending.difference_update(
                task for task in list(self._pending) if task.get_loop() is not loop and task.get_loop().is_closed()
            )
            if not tasks:
                return
            await asyncio.gather(*tasks, return_exceptions=True)

    def load(self) -> None:
        """Read every row and merge it (sync: manallm.background's poller calls it on its DB thread)."""
        self.poll()

    def poll(self) -> None:
        """Write what an outage held back, then merge rows written by other processes: a
        row replaces this process's copy only when its ``updated_at`` is newer. Listeners
        hear of status changes."""
        self._write_held()
        latest = rows.read_rows()
        now = self.clock()
        transitions = []
        with self._lock:
            for row in latest:
                old = self._breakers.get(row.key)
                if old is not None and (row.updated_at <= old.updated_at or row == old):
                    continue
                self._breakers[row.key] = row
                old_status = HEALTHY if old is None else old.status(now)
                new_status = row.status(now)
                if old_status != new_status:
                    transitions.append(Transition(
                        row.key, row.provider, row.model, old_status, new_status,
                        (row.last_error or None) if new_status != HEALTHY else None, row.unhealthy_until, "db",
                    ))
        for transition in transitions:
            self._emit(transition)

    def clear(self) -> None:
        """Forget the in-memory state (tests); the database is untouched."""
        with self._lock:
            self._breakers.clear()
            self._unwritten.clear()

    # --- listeners ------------------------------------------------------------------

    def add_listener(self, fn: Callable[[Transition], None]) -> None:
        if fn not in self._listeners:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[Transition], None]) -> None:
        try:
            self._listeners.remove(fn)
        except ValueError:
            pass

    def _emit(self, transition):
        for fn in list(self._listeners):
            try:
                fn(transition)
            except Exception:
                logger.exception("breaker listener %r failed on %s", fn, transition)


def log_transition(transition: Transition) -> None:
    """One log line per breaker status change."""
    t = transition
    level = logging.WARNING if t.new_status == UNHEALTHY else logging.INFO
    where = "" if t.source == "local" else " (seen in the database)"
    detail = ""
    if t.new_status == UNHEALTHY and t.unhealthy_until is not None:
        detail = f" until {time.strftime('%H:%M:%S', time.gmtime(t.unhealthy_until))}Z"
    if t.error:
        detail += f": {t.error}"
    logger.log(level, "breaker %s: %s -> %s%s%s", t.key, t.old_status, t.new_status, where, detail)


def _secrets():
    keys = [config.get("api_key") for config in settings.PROVIDERS.values()]
    keys += [settings.MANA_LLM_ADMIN_KEY, *settings.MANA_LLM_API_KEYS]
    return [key for key in keys if key]


breakers = BreakerBoard()
