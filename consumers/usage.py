"""Usage attribution (README#consumers): every finished request summed in memory, written
as hourly rows off the request path.

``book.record`` is the Exchange listener (manallm.exchange): on the request path it only
adds to a dict. ``book.flush`` runs on the database thread (manallm.background): every
USAGE_FLUSH_SECONDS from the poller, and once more on a graceful stop. It takes the sums
out, writes them in one transaction (an increment per row, safe with several processes
writing the same row) and puts them back if the database refused them, so an outage the
process survives loses nothing.

The same step reads each budgeted consumer's tokens of its current period from the rows
(``bases``): token budgets (consumers.limits) count those plus what this process charged
that the read did not see yet (``unread``), so a budget survives restarts and is never
read from the database on the request path.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Sum

from manallm import metrics
from manallm.exchange import Exchange

from .windows import period_bounds

logger = logging.getLogger("manallm.consumers")

FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cache_hits")
Key = tuple[str, str, str, int]  # consumer, requested model, target ('' when none served), hour (Unix s)
# A stream the client left is not the gateway's error; every other error_type on a 2xx stream is.
NOT_AN_ERROR = {None, "client_disconnected"}
STATUS_CLASSES = {2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def _merge(into: dict, key, amounts) -> None:
    row = into.get(key)
    if row is None:
        into[key] = list(amounts)
    else:
        for index, amount in enumerate(amounts):
            row[index] += amount


UNKNOWN_MODEL = "(unknown model)"


class UsageBook:
    """This process's usage not yet in the database, and the budget bases read from it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.Lock()  # the event loop records while the database thread flushes
        self.pending: dict[Key, list[int]] = {}
        self.unread: dict[str, dict[int, int]] = {}  # consumer -> hour -> tokens the last base read missed
        self.landed: dict[str, dict[int, int]] = {}  # tokens committed since that read
        self.bases: dict[tuple[str, float], int] = {}  # (consumer, period start) -> tokens in the rows
        self.last_flush = time.monotonic()

    def __str__(self) -> str:
        return "usage"

    # --- the request path -------------------------------------------------------------

    def record(self, exchange: Exchange) -> None:
        """The Exchange listener: sums and the consumer metrics (memory only).

        A request a limit refused never reached the router: it counts in the metrics, not in
        the rows. A cache hit is a request and a cache hit; its tokens are not charged.
        """
        consumer = exchange.consumer
        # A name no alias or provider knows (a 404) is a client's free text: counted under
        # one name, so a typo or a hostile client cannot grow the rows and metric labels.
        requested = UNKNOWN_MODEL if exchange.error_type == "model_not_found" else exchange.requested
        metrics.child(metrics.consumer_requests, consumer, requested,
                      STATUS_CLASSES.get(exchange.status // 100, "5xx")).inc()
        if exchange.limited:
            return
        hit = exchange.cache == "hit"
        prompt, completion = (0, 0) if hit else (exchange.prompt_tokens, exchange.completion_tokens)
        error = exchange.status >= 400 or exchange.error_type not in NOT_AN_ERROR
        now = self.clock()
        hour = int(now // 3600 * 3600)
        key = (consumer, requested, exchange.target or "", hour)
        with self.lock:
            _merge(self.pending, key, (1, int(error), prompt, completion, int(hit)))
            if prompt or completion:
                hours = self.unread.setdefault(consumer, {})
                hours[hour] = hours.get(hour, 0) + prompt + completion
        if prompt:
            metrics.child(metrics.consumer_tokens, consumer, "prompt").inc(prompt)
        if completion:
            metrics.child(metrics.consumer_tokens, consumer, "completion").inc(completion)

    def tokens_used(self, consumer: str, period_start: float) -> int:
        """Tokens charged to ``consumer`` since ``period_start``: the rows as last read, plus
        what this process charged since that read saw (memory only)."""
        used = self.bases.get((consumer, period_start), 0)
        hours = self.unread.get(consumer)
        if hours:
            with self.lock:
                used += sum(tokens for hour, tokens in hours.items() if hour >= period_start)
        return used

    # --- the database thread -----------------------------------------------------------

    def load(self) -> None:
        """Read the budget bases (a state source's load: before the first request is served)."""
        self.read_bases()

    def poll(self) -> None:
        """Flush when USAGE_FLUSH_SECONDS passed since the last try (the poller runs this often)."""
        if time.monotonic() - self.last_flush >= settings.USAGE_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> int:
        """Write what this process holds, then re-read the budget bases; the rows written.
        Raises when the database refused: the sums are back in ``pending``, nothing lost."""
        self.last_flush = time.monotonic()
        with self.lock:
            batch, self.pending = self.pending, {}
        if batch:
            try:
                write(batch)
            except Exception:
                with self.lock:
                    for key, amounts in batch.items():
                        _merge(self.pending, key, amounts)
                raise
            with self.lock:
                for (consumer, _model, _target, hour), amounts in batch.items():
                    tokens = amounts[2] + amounts[3]
                    if tokens:
                        hours = self.landed.setdefault(consumer, {})
                        hours[hour] = hours.get(hour, 0) + tokens
        self.read_bases()
        return len(batch)

    def read_bases(self) -> None:
        """Each budgeted consumer's tokens in its current period, from the rows every process wrote."""
        from .table import consumers

        now = self.clock()
        bases: dict[tuple[str, float], int] = {}
        budgeted = [view for view in consumers.snapshot.consumers.values() if view.token_budget is not None]
        for period in ("day", "month"):
            names = [view.name for view in budgeted if (view.budget_period or "month") == period]
            if not names:
                continue
            start = period_bounds(now, period)[0]
            bases.update({(name, start): 0 for name in names})
            rows = (usage_rows().filter(consumer__in=names, hour__gte=datetime.fromtimestamp(start, timezone.utc))
                    .values("consumer").annotate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")))
            for row in rows:
                bases[(row["consumer"], start)] = (row["prompt"] or 0) + (row["completion"] or 0)
        with self.lock:
            self.bases = bases
            for consumer, hours in self.landed.items():
                unread = self.unread.get(consumer, {})
                for hour, tokens in hours.items():
                    left = unread.get(hour, 0) - tokens
                    if left > 0:
                        unread[hour] = left
                    else:
                        unread.pop(hour, None)
                if not unread:
                    self.unread.pop(consumer, None)
            self.landed = {}


def usage_rows():
    from .models import UsageHour

    return UsageHour.objects


def write(batch: dict[Key, list[int]]) -> None:
    """Add ``batch`` to the hourly rows in one transaction: an increment per row, created on
    a miss (another process creating the same row first is caught and incremented)."""
    from .models import UsageHour

    with transaction.atomic():
        for (consumer, model, target, hour), amounts in batch.items():
            where = {"consumer": consumer, "model": model, "target": target,
                     "hour": datetime.fromtimestamp(hour, timezone.utc)}
            increments = {name: F(name) + amount for name, amount in zip(FIELDS, amounts) if amount}
            if usage_rows().filter(**where).update(**increments):
                continue
            try:
                with transaction.atomic():
                    UsageHour.objects.create(**where, **dict(zip(FIELDS, amounts)))
            except IntegrityError:
                usage_rows().filter(**where).update(**increments)


book = UsageBook()


async def flush_on_shutdown() -> None:
    """background.on_shutdown hook: a graceful stop writes what this process still holds."""
    from manallm.background import run_db

    written = await run_db(book.flush)
    logger.info("stopping: usage flushed (%d rows)", written)
