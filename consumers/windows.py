"""Per-process counting for consumer limits (README#consumers): sliding minutes and UTC periods.

Pure and clock-free: every call takes ``now`` (Unix seconds), so the limiter's tests move
time by hand. The Redis backend (consumers.limits) keeps the same one-second buckets in
a hash, so both count alike and a fallback from one to the other changes nothing a
client could notice.
"""
from __future__ import annotations

import calendar
import math
from collections import deque
from datetime import datetime, timezone

MINUTE = 60


class Window:
    """Counts over a sliding minute in one-second buckets: what was added in the second
    ``s`` counts until ``s + 60`` (so at most one second early: Retry-After is in whole
    seconds anyway). Amortised O(1): a running total, the expired buckets dropped from the left."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()  # [second, count], oldest first
        self.total = 0

    def _expire(self, second: int) -> None:
        horizon = second - MINUTE + 1
        buckets = self.buckets
        while buckets and buckets[0][0] < horizon:
            self.total -= buckets.popleft()[1]

    def count(self, now: float) -> int:
        self._expire(int(now))
        return self.total

    def add(self, now: float, amount: int = 1) -> None:
        second = int(now)
        self._expire(second)
        if self.buckets and self.buckets[-1][0] == second:
            self.buckets[-1][1] += amount
        else:
            self.buckets.append([second, amount])
        self.total += amount

    def retry_after(self, now: float, limit: int) -> int:
        """Whole seconds until the count is under ``limit`` again (call after ``count``)."""
        return retry_after(now, self.buckets, self.total, limit)


def retry_after(now: float, buckets, total: int, limit: int) -> int:
    """Whole seconds until ``total`` minus the buckets that expire by then is under ``limit``.

    ``buckets`` are (second, count) pairs, oldest first (the Redis backend sorts its hash's)."""
    for second, count in buckets:
        total -= count
        if total < limit:
            return max(1, math.ceil(second + MINUTE - now))
    return MINUTE


def period_bounds(now: float, period: str) -> tuple[float, float]:
    """The UTC calendar ``day`` or ``month`` holding ``now``: (start, end) in Unix seconds."""
    moment = datetime.fromtimestamp(now, timezone.utc)
    if period == "month":
        start = datetime(moment.year, moment.month, 1, tzinfo=timezone.utc)
        year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        end = datetime(year, month, 1, tzinfo=timezone.utc)
        return start.timestamp(), end.timestamp()
    day = calendar.timegm((moment.year, moment.month, moment.day, 0, 0, 0))
    return float(day), float(day + 86400)
