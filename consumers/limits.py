"""Consumer limits (README#consumers): rpm, tpm, max_concurrent and token budgets, checked
before a request goes upstream.

``limiter.admit(exchange)`` runs in ``routing.views.begin``. A built-in consumer, or one
with no limit, costs two dict lookups. Otherwise:

- **Without REDIS_URL** each process counts alone (consumers.windows: one-second buckets
  over a sliding minute, an in-flight count).
- **With REDIS_URL** one Lua script decides atomically for every process and replica
  (one round trip, bounded by ``REDIS_TIMEOUT``); what the request uses afterwards (its
  tokens, its concurrency slot) goes back in one fire-and-forget call when it ends. The
  process keeps counting on its own beside it, so a Redis fault (down, or slower than
  ``REDIS_TIMEOUT``) falls back to that at once — logged once, retried after
  ``REDIS_RETRY_SECONDS`` — and never fails a request.
- **Budgets** count the tokens of the consumer's current UTC day or month: the usage rows
  as last read in the background, plus what this process charged since (consumers.usage),
  and with Redis a shared counter seeded from that.

A refused request is a 429 ``rate_limit`` with code ``consumer_<limit>`` and ``Retry-After``
(whole seconds until the window or period admits it); it never reaches a provider.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from collections.abc import Callable

from manallm import metrics
from manallm.errors import APIError
from manallm.exchange import Exchange

from .table import BUILT_IN, ConsumerView, consumers
from .usage import UsageBook, book
from .windows import MINUTE, Window, period_bounds, retry_after

logger = logging.getLogger("manallm.consumers")

REDIS_TIMEOUT = 0.05  # a Redis call slower than this is a fault: the process counts alone
REDIS_RETRY_SECONDS = 2.0  # after a fault, Redis is asked again this much later
LATE_SECONDS = 1.0  # a call unanswered this long is a fault (a late answer before it still counts)
MAX_LATE = 32  # more late calls than this at once is a fault
SLOT_LEASE = 900  # seconds a concurrency slot held in Redis outlives a process that died holding it
UNITS = {"rpm": "requests per minute", "tpm": "tokens per minute", "concurrency": "requests in flight",
         "budget": "tokens per {period}"}


class Limited(APIError):
    """429 ``rate_limit``: a consumer over one of its limits (README#consumers)."""

    status = 429
    type = "rate_limit"

    def __init__(self, consumer: str, limit: str, allowed: int, retry_after: int, period: str = "") -> None:
        unit = UNITS[limit].format(period=period)
        super().__init__(f"Consumer {consumer!r} is over its limit of {allowed} {unit}; retry in {retry_after} s.",
                         code=f"consumer_{limit}", headers={"Retry-After": str(retry_after)})
        self.limit = limit


def has_limits(view: ConsumerView) -> bool:
    return (view.rpm is not None or view.tpm is not None or view.max_concurrent is not None
            or view.token_budget is not None)


class Counts:
    """One consumer's counts in this process, and what Redis last said about the others.

    With Redis, every answer also says how full the shared windows are; the part that is
    not this process's (``others``) and a refusal's end (``blocked_until``) are kept, so a
    fallback to counting in the process starts from the shared view of the last minute
    instead of from this process's share alone.
    """

    __slots__ = ("requests", "tokens", "in_flight", "others", "blocked_until", "blocked_limit")

    def __init__(self) -> None:
        self.requests = Window()
        self.tokens = Window()
        self.in_flight = 0
        self.others = (float("-inf"), 0, 0)  # (seen at, requests, tokens) of the other processes
        self.blocked_until = 0.0
        self.blocked_limit = ""

    def learn(self, now: float, refused: str, seconds: int, requests: int, tokens: int) -> None:
        """Keep what a Redis answer says about the shared windows."""
        if refused in ("rpm", "tpm"):
            self.blocked_until, self.blocked_limit = now + seconds, refused
        self.others = (now, max(0, requests - self.requests.count(now)) if requests >= 0 else 0,
                       max(0, tokens - self.tokens.count(now)) if tokens >= 0 else 0)


# KEYS: requests window, tokens window, slots, budget counter. ARGV: now, rpm, tpm,
# max_concurrent, budget (-1: none), this process's budget estimate, slot member, slot lease.
# Returns {limit refused or '', Retry-After seconds, requests in the window, tokens in the window}
# (-1 for a window the consumer has no limit on).
ADMIT = """
local now = tonumber(ARGV[1])
local second = math.floor(now)
local function window(key)
  local flat = redis.call('HGETALL', key)
  local total, live, stale = 0, {}, {}
  for i = 1, #flat, 2 do
    local s, n = tonumber(flat[i]), tonumber(flat[i + 1])
    if s < second - 59 then stale[#stale + 1] = flat[i] else total = total + n; live[#live + 1] = {s, n} end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  return total, live
end
local function wait(live, total, limit)
  for _, bucket in ipairs(live) do
    total = total - bucket[2]
    if total < limit then return math.max(1, math.ceil(bucket[1] + 60 - now)) end
  end
  return 60
end
local rpm, tpm, slots, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local requests, rlive, tokens, tlive = -1, {}, -1, {}
if rpm >= 0 then requests, rlive = window(KEYS[1]) end
if tpm >= 0 then tokens, tlive = window(KEYS[2]) end
local function answer(limit, seconds) return {limit, tostring(seconds), tostring(requests), tostring(tokens)} end
if budget >= 0 and math.max(tonumber(redis.call('GET', KEYS[4]) or '0'), tonumber(ARGV[6])) >= budget then
  return answer('budget', 0)
end
if tpm >= 0 and tokens >= tpm then return answer('tpm', wait(tlive, tokens, tpm)) end
if rpm >= 0 and requests >= rpm then return answer('rpm', wait(rlive, requests, rpm)) end
if slots >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= slots then return answer('concurrency', 1) end
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[8]), ARGV[7])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[8]))
end
if rpm >= 0 then
  redis.call('HINCRBY', KEYS[1], second, 1)
  redis.call('EXPIRE', KEYS[1], 61)
  requests = requests + 1
end
return answer('', 0)
"""

# KEYS: as ADMIT's. ARGV: now, tokens, budget estimate, budget ttl (0: no budget), slot member.
SETTLE = """
local tokens = tonumber(ARGV[2])
if tokens > 0 then
  redis.call('HINCRBY', KEYS[2], math.floor(tonumber(ARGV[1])), tokens)
  redis.call('EXPIRE', KEYS[2], 61)
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[4], ARGV[3], 'NX', 'EX', tonumber(ARGV[4]))
    redis.call('INCRBY', KEYS[4], tokens)
  end
end
if ARGV[5] ~= '' then redis.call('ZREM', KEYS[3], ARGV[5]) end
return 1
"""


class SharedCounts:
    """The Redis side: one client per event loop, the two scripts, the fault state.

    A request waits at most REDIS_TIMEOUT for its answer. An answer that is merely late
    (a busy Redis, or a busy event loop) is not thrown away: the call goes on for up to
    LATE_SECONDS in the background and its answer still updates this process's view
    (``late``). A call that fails, or is still unanswered after LATE_SECONDS, or too many
    late calls at once, mark Redis down: for REDIS_RETRY_SECONDS no request asks it.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = None
        self.loop = None
        self.down_until = 0.0
        self.slow_logged = False
        self.late: set[asyncio.Task] = set()
        self.admit_script = self.settle_script = None

    def ready(self) -> bool:
        """False while a recent fault says: count in the process for now."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self.loop = loop
            self.client = Redis.from_url(self.url, socket_timeout=LATE_SECONDS, socket_connect_timeout=LATE_SECONDS,
                                         retry=Retry(NoBackoff(), 0), lib_name=None, lib_version=None)
            self.admit_script = self.client.register_script(ADMIT)
            self.settle_script = self.client.register_script(SETTLE)
        return time.monotonic() >= self.down_until

    async def call(self, script, keys: list[str], args: list,
                   late: Callable[[list], None] | None = None) -> list | None:
        """The script's answer within REDIS_TIMEOUT, or None (the caller counts in the process)."""
        task = asyncio.get_running_loop().create_task(self._run(script, keys, args))
        try:
            done, _ = await asyncio.wait({task}, timeout=REDIS_TIMEOUT)
        except asyncio.CancelledError:  # the client left: the answer, when it comes, is handled as late
            self._detach(task, late)
            raise
        if done:
            return task.result()
        if not self.slow_logged:
            self.slow_logged = True
            logger.warning("Redis answered consumer limits slower than %g ms; such a request is counted in this "
                           "process", REDIS_TIMEOUT * 1000)
        self._detach(task, late)
        if len(self.late) > MAX_LATE:
            self._fault(f"{len(self.late)} calls unanswered after {REDIS_TIMEOUT * 1000:g} ms")
        return None

    def _detach(self, task: asyncio.Task, late: Callable[[list], None] | None) -> None:
        self.late.add(task)
        task.add_done_callback(self.late.discard)
        if late is not None:
            task.add_done_callback(lambda ended: _deliver(ended, late))

    async def _run(self, script, keys: list[str], args: list) -> list | None:
        try:
            async with asyncio.timeout(LATE_SECONDS):
                result = await script(keys=keys, args=args)
        except Exception as exc:  # down, hung, or a script error: never raised into a request
            self._fault(f"{type(exc).__name__}: {exc}")
            return None
        if self.down_until:
            logger.info("Redis is back: consumer limits are shared again")
            self.down_until = 0.0
        return result

    def _fault(self, reason: str) -> None:
        if self.down_until == 0.0:
            logger.warning("Redis unavailable for consumer limits (%s); counting in this process, retrying "
                           "every %g s", reason, REDIS_RETRY_SECONDS)
        self.down_until = time.monotonic() + REDIS_RETRY_SECONDS


def keys_for(name: str, budget_start: float) -> list[str]:
    base = f"manallm:limits:{{{name}}}"  # one hash slot per consumer
    return [f"{base}:requests", f"{base}:tokens", f"{base}:slots", f"{base}:budget:{int(budget_start)}"]


class Limiter:
    def __init__(self, clock: Callable[[], float] = time.time, usage: UsageBook = book,
                 redis_url: str | None = None) -> None:
        self.clock = clock
        self.usage = usage
        self.counts: dict[str, Counts] = {}
        self.shared = SharedCounts(redis_url) if redis_url else None
        self.tasks: set[asyncio.Task] = set()
        self.members = itertools.count()

    def configure(self, redis_url: str | None) -> None:
        self.shared = SharedCounts(redis_url) if redis_url else None

    async def admit(self, exchange: Exchange) -> None:
        """Raise ``Limited`` when the request's consumer is over a limit; otherwise count it
        (and, with ``max_concurrent``, hold a slot until the exchange ends)."""
        name = exchange.consumer
        if name in BUILT_IN:
            return
        view = consumers.get(name)
        if view is None or not has_limits(view):
            return
        now = self.clock()
        counts = self.counts.get(name)
        if counts is None:
            counts = self.counts[name] = Counts()
        budget = self._budget(view, now)
        shared = self.shared
        if shared is not None and shared.ready():
            member = f"{os.getpid()}:{next(self.members)}" if view.max_concurrent is not None else ""
            keys = keys_for(name, budget[1] if budget else 0)
            answer = await shared.call(shared.admit_script, keys, [
                repr(now), _arg(view.rpm), _arg(view.tpm), _arg(view.max_concurrent), _arg(view.token_budget),
                budget[0] if budget else 0, member, SLOT_LEASE],
                late=lambda late: self._late(shared, keys, member, counts, late))
            if answer is not None:
                refused, seconds, requests, tokens = _decode(answer)
                if refused:
                    counts.learn(now, refused, seconds, requests, tokens)
                    self._refuse(exchange, view, refused, seconds, now)
                self._admitted(exchange, view, counts, now, member, shared)
                counts.learn(now, refused, seconds, requests, tokens)
                return
        self._check_locally(exchange, view, counts, now, budget)
        self._admitted(exchange, view, counts, now, "", None)

    def _late(self, shared: SharedCounts, keys: list[str], member: str, counts: Counts, answer: list) -> None:
        """A late admission answer: the request was already decided in the process, so the
        slot Redis may have granted is given back; the shared view it carries is kept."""
        refused, seconds, requests, tokens = _decode(answer)
        counts.learn(self.clock(), refused, seconds, requests, tokens)
        if member and not refused:
            self._spawn(shared.call(shared.settle_script, keys, [repr(self.clock()), 0, 0, 0, member]))

    def _spawn(self, call) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self.tasks.add(task)  # a task nothing refers to may be collected before it ran
        task.add_done_callback(self.tasks.discard)

    def _budget(self, view: ConsumerView, now: float) -> tuple[int, float, float] | None:
        """(tokens used this period as this process knows it, period start, period end)."""
        if view.token_budget is None:
            return None
        start, end = period_bounds(now, view.budget_period or "month")
        return self.usage.tokens_used(view.name, start), start, end

    def _check_locally(self, exchange: Exchange, view: ConsumerView, counts: Counts, now: float, budget) -> None:
        if budget is not None and budget[0] >= view.token_budget:
            self._refuse(exchange, view, "budget", 0, now)
        if now < counts.blocked_until:
            self._refuse(exchange, view, counts.blocked_limit, math.ceil(counts.blocked_until - now), now)
        seen, other_requests, other_tokens = counts.others
        if now - seen >= MINUTE:
            other_requests = other_tokens = 0
        for limit, allowed, window, others in (("tpm", view.tpm, counts.tokens, other_tokens),
                                               ("rpm", view.rpm, counts.requests, other_requests)):
            if allowed is not None:
                total = window.count(now) + others
                if total >= allowed:
                    self._refuse(exchange, view, limit, retry_after(now, window.buckets, total, allowed), now)
        if view.max_concurrent is not None and counts.in_flight >= view.max_concurrent:
            self._refuse(exchange, view, "concurrency", 1, now)

    def _refuse(self, exchange: Exchange, view: ConsumerView, limit: str, retry_after: int, now: float) -> None:
        period = view.budget_period or "month"
        if limit == "budget":
            retry_after = max(1, math.ceil(period_bounds(now, period)[1] - now))
        allowed = {"rpm": view.rpm, "tpm": view.tpm, "concurrency": view.max_concurrent,
                   "budget": view.token_budget}[limit]
        exchange.limited = limit
        metrics.rate_limited.labels(view.name, limit).inc()
        raise Limited(view.name, limit, allowed, retry_after, period)

    def _admitted(self, exchange: Exchange, view: ConsumerView, counts: Counts, now: float, member: str,
                  shared: SharedCounts | None) -> None:
        """Count the admitted request in this process (always: the fallback starts from it)
        and arrange what its end gives back."""
        counts.requests.add(now)
        counts.in_flight += 1
        exchange.on_end.append(lambda ended: self._ended(ended, view, counts, member, shared))

    def _ended(self, exchange: Exchange, view: ConsumerView, counts: Counts, member: str,
               shared: SharedCounts | None) -> None:
        """An exchange.on_end hook: free the slot, charge the tokens to tpm (and the shared budget)."""
        counts.in_flight -= 1
        tokens = 0 if exchange.cache == "hit" else exchange.prompt_tokens + exchange.completion_tokens
        now = self.clock()
        if tokens:
            counts.tokens.add(now, tokens)
        if shared is None or not (member or tokens):
            return
        budget = self._budget(view, now)
        keys = keys_for(view.name, budget[1] if budget else 0)
        ttl = math.ceil(budget[2] - now) + 60 if budget else 0
        args = [repr(now), tokens, budget[0] if budget else 0, ttl, member]
        self._spawn(shared.call(shared.settle_script, keys, args))


def _deliver(task: asyncio.Task, late: Callable[[list], None]) -> None:
    if task.cancelled() or task.result() is None:
        return
    try:
        late(task.result())
    except Exception:
        logger.exception("a late Redis answer could not be applied")


def _decode(answer: list) -> tuple[str, int, int, int]:
    refused, seconds, requests, tokens = (part.decode() if isinstance(part, bytes) else str(part) for part in answer)
    return refused, int(seconds), int(requests), int(tokens)


def _arg(limit: int | None) -> int:
    return -1 if limit is None else limit


limiter = Limiter()
