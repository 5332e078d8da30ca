"""The fallback engine (docs/architecture.md#routing): one walk down a chain for chat, streams and embeddings.

``Router.walk`` resolves the model name, skips entries that cannot serve, tries the rest
with the retry / fall-over / propagate policy each ``providers.errors`` class carries,
and records every outcome on the breakers and in the metrics. What one attempt *is*
differs by call type and is passed in as a function; everything else is shared. A
committed stream is relayed by ``routing.streams``.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from django.conf import settings

from health.board import SKIP_REASON as BREAKER_SKIP
from health.board import BreakerBoard
from health.board import breakers as default_breakers
from health.breaker import HEALTHY, UNHEALTHY
from manallm import metrics
from manallm.errors import APIError
from providers import errors
from providers import registry as default_providers

from .served import Attempt, Served, attempts_header
from .streams import Relay, Started, first_token
from .table import AliasTable, Entry
from .table import aliases as default_aliases

logger = logging.getLogger("manallm.router")

T = TypeVar("T")  # what one attempt returns: an answer dict, or a Started stream
Body = dict[str, Any]
AttemptFn = Callable[[Any, Entry, float], Awaitable[T]]

# Reasons an entry was passed over without a call (README#endpoints); every other reason is a failure.
SKIP_REASONS = frozenset({"unconfigured", "cache-unhealthy", "disabled", "saturated"})


class NoHealthyProvider(APIError):
    status = 503
    type = "no_healthy_provider"
    code = "no_healthy_provider"


class Router:
    def __init__(self, *, aliases: AliasTable | None = None, providers: Any = None,
                 breakers: BreakerBoard | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 jitter: Callable[[float, float], float] = random.uniform,
                 clock: Callable[[], float] = time.monotonic):
        self.aliases = aliases or default_aliases
        self.providers = providers or default_providers
        self.breakers = breakers or default_breakers
        self.sleep = sleep
        self.jitter = jitter
        self.clock = clock

    # --- the three call types ---------------------------------------------------------

    async def chat(self, body: Body) -> Served[dict]:
        async def attempt(provider, entry, timeout):
            async with asyncio.timeout(timeout):
                return await provider.chat(entry.model, body)

        served = await self.walk(body, attempt, streaming=False)
        served.value["model"] = served.target
        self.finish(served, served.value.get("usage"))
        return served

    async def embed(self, body: Body) -> Served[dict]:
        async def attempt(provider, entry, timeout):
            async with asyncio.timeout(timeout):
                return await provider.embed(entry.model, body)

        served = await self.walk(body, attempt, streaming=False, capability_check=False)
        served.value["model"] = served.target
        self.finish(served, served.value.get("usage"), completion=False)
        return served

    async def chat_stream(self, body: Body) -> Served[Relay]:
        """Serve a stream: returns once its first content token is in hand.

        Iterate the returned ``Relay`` to the end or ``aclose`` it, which cancels the
        upstream and frees the concurrency slot.
        """

        async def attempt(provider, entry, timeout):
            return await first_token(provider.chat_stream(entry.model, body).__aiter__(), timeout, self.clock)

        started: Served[Started] = await self.walk(body, attempt, streaming=True)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chain = self.aliases.continuation_chain(started.alias)
        if chain is not None and (body.get("n") or 1) > 1:
            chain = None  # several choices cannot share one assistant prefill
        return replace(started, value=Relay(self, started, include_usage, body=body, chain=chain))

    async def continue_stream(self, body: Body, chain: tuple[Entry, ...], failed: Entry, tried: set[str],
                              wrap: Callable[[AsyncIterator[dict]], AsyncIterator[dict]]) -> Served[Started] | None:
        """Continue a stream ``failed`` broke after its first token (README#stream-continuation).

        From ``failed`` onward in chain order, the first entry marked ``prefill`` that no
        continuation of this request went to yet (``tried``) and that is not skipped (as
        the walk skips: a continuation is a call, so it claims a half-open breaker's trial)
        gets ``body`` (the request plus the assistant prefill). Returns that part once its
        first token is in hand, its upstream read through ``wrap``; the caller releases it.
        None when no entry is left or the one tried fails before its first token: never a
        fallback to the next, the stream then ends with the original failure.
        """
        targets = [entry.target for entry in chain]
        start = targets.index(failed.target) if failed.target in targets else 0
        for entry in chain[start:]:
            if not entry.prefill or entry.target in tried:
                continue
            provider = self.providers.get(entry.provider)
            reason, _ = self.admit(provider, entry)
            if reason is not None:
                logger.info("stream continuation skips %s: %s", entry.target, reason)
                continue
            tried.add(entry.target)
            return await self._continue_on(provider, entry, body, failed, wrap)
        logger.info("no chain entry can continue the stream %s cut", failed.target)
        return None

    async def _continue_on(self, provider: Any, entry: Entry, body: Body, failed: Entry,
                           wrap: Callable[[AsyncIterator[dict]], AsyncIterator[dict]]) -> Served[Started] | None:
        """One continuation try, counted in mana_llm_stream_continuations_total."""
        release = _once(provider.release)
        timeout = first_token_timeout(entry)
        started = self.clock()
        try:
            upstream = wrap(provider.chat_stream(entry.model, body).__aiter__())
            value, error = await self._attempt(entry, first_token(upstream, timeout, self.clock), timeout)
        except Exception:
            # A bug (logged by _attempt), not an outage: the stream ends with its original failure.
            release()
            metrics.stream_continuations.labels(failed.target, entry.target, "failed").inc()
            return None
        except BaseException:
            release()
            raise
        if error is not None:
            release()
            self._record_failure(entry, error)
            logger.warning("continuing the stream %s cut on %s failed: %s", failed.target, entry.target, error.message)
            metrics.stream_continuations.labels(failed.target, entry.target, "failed").inc()
            return None
        self.breakers.record_success(entry.provider, entry.model)
        metrics.stream_continuations.labels(failed.target, entry.target, "continued").inc()
        logger.info("the stream %s cut continues on %s", failed.target, entry.target)
        return Served(entry, None, [], value, started, release)

    # --- the walk ----------------------------------------------------------------------

    async def walk(self, body: Body, attempt: AttemptFn[T], *, streaming: bool,
                   capability_check: bool = True) -> Served[T]:
        """Serve from the first entry that is configured, healthy and answers.

        A stream keeps its provider's concurrency slot until ``Served.release`` is called;
        a plain call has given it back by the time this returns.
        """
        alias, chain = self.aliases.resolve(body.get("model"))
        requested = ("mana", alias.partition("/")[2]) if alias else (chain[0].provider, chain[0].model)
        metrics.child(metrics.llm_requests, *requested, "true" if streaming else "false").inc()
        wants_tools = capability_check and bool(body.get("tools"))
        attempts, breaker_skips = [], []

        for index, entry in enumerate(chain):
            next_target = chain[index + 1].target if index + 1 < len(chain) else ""
            provider = self.providers.get(entry.provider)
            reason, _ = self.admit(provider, entry)
            if reason is None and wants_tools:
                await self._check_tools(provider, entry, attempts)
            if reason is not None:
                if reason == BREAKER_SKIP:
                    breaker_skips.append(entry)
                self._fall(attempts, entry, reason, next_target)
                continue
            try:
                value, started = await self._try_entry(provider, entry, attempt, attempts)
            except _FellOver as fell:
                provider.release()
                self._fall(attempts, entry, fell.reason, next_target)
                continue
            except BaseException:
                provider.release()
                raise
            if not streaming:
                provider.release()
            if alias:
                metrics.child(metrics.alias_resolved, alias, entry.target).inc()
            return Served(entry, alias, attempts, value, started,
                          _once(provider.release) if streaming else (lambda: None))

        raise self._exhausted(chain, attempts, breaker_skips)

    def admit(self, provider: Any, entry: Entry, *, claim: bool = True) -> tuple[str | None, str]:
        """The skip rules (README#endpoints), written once: ``(skip reason or None, breaker
        status)`` for a call to ``entry`` now, the status HEALTHY, HALF_OPEN or UNHEALTHY.

        ``claim`` (the walk, a stream continuation): a call is about to be made, so a
        half-open breaker's trial is claimed and a concurrency slot taken, which the
        caller releases. Without it (the route preview, routing.preview) only memory is
        read: no trial claimed, no slot taken.
        """
        if provider is None:
            return "unconfigured", HEALTHY
        if not entry.enabled:
            return "disabled", HEALTHY
        status = self.breakers.admit(entry.provider, entry.model, claim=claim)
        if status == UNHEALTHY:
            return BREAKER_SKIP, status
        full = not provider.try_acquire() if claim else provider.saturated()
        if full:
            return "saturated", status
        return None, status

    async def _check_tools(self, provider: Any, entry: Entry, attempts: list[Attempt]) -> None:
        """Refuse tools for a model that cannot call them (capability), freeing the slot
        ``admit`` took."""
        try:
            capable = await provider.supports_tools(entry.model)
        except BaseException:
            provider.release()
            raise
        if not capable:
            provider.release()
            raise self._propagated(entry, attempts, errors.CapabilityError(
                f"{entry.target} cannot call tools; the request carries 'tools'. Use a tool-capable model "
                "or alias rather than have the tools silently dropped.", param="tools"))

    async def _try_entry(self, provider: Any, entry: Entry, attempt: AttemptFn[T],
                         attempts: list[Attempt]) -> tuple[T, float]:
        """Try one entry, retrying what may be retried; returns (value, start time).

        Raises ``_FellOver`` to move on to the next entry, or the error to propagate.
        """
        timeout = first_token_timeout(entry)
        for retry in range(settings.RETRIES + 1):
            started = self.clock()
            value, error = await self._attempt(entry, attempt(provider, entry, timeout), timeout)
            if error is None:
                self.breakers.record_success(entry.provider, entry.model)
                return value, started
            self._record_failure(entry, error)
            if error.action == errors.PROPAGATE:
                raise self._propagated(entry, attempts, error, recorded=True)
            if error.action == errors.FALLOVER or retry == settings.RETRIES:
                raise _FellOver(error.reason)
            if self.breakers.claim(entry.provider, entry.model):
                raise _FellOver(error.reason)  # these attempts tripped its breaker: stop asking it
            delay = self._retry_delay(error, retry)
            if delay is None:
                raise _FellOver(error.reason)
            metrics.retries.labels(entry.provider, entry.model, error.reason).inc()
            logger.info("retrying %s in %.2f s after %s", entry.target, delay, error.reason)
            await self.sleep(delay)
        raise AssertionError("unreachable")

    async def _attempt(self, entry: Entry, call: Awaitable[T],
                       timeout: float) -> tuple[T | None, errors.ProviderError | None]:
        """Await one call: ``(value, None)``, or ``(None, error)`` for a failure of the
        taxonomy (no first token in ``timeout`` included). Any other exception is a bug
        somewhere, not an outage: logged, counted and raised, never fallen over on."""
        try:
            return await call, None
        except TimeoutError:
            return None, errors.FirstTokenTimeout(f"{entry.target} gave no first token within {timeout:g} s.")
        except errors.ProviderError as exc:
            return None, exc
        except Exception:
            logger.exception("unexpected error from %s", entry.target)
            metrics.llm_errors.labels(entry.provider, entry.model, "unexpected").inc()
            raise

    def _retry_delay(self, error: errors.ProviderError, retry: int) -> float | None:
        """Seconds to wait before retrying, or None to fall over at once."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return retry_after if retry_after <= settings.RETRY_AFTER_MAX else None
        return 0.5 * (2 ** retry) * self.jitter(0.75, 1.25)

    def _record_failure(self, entry: Entry, error: errors.ProviderError) -> None:
        metrics.llm_errors.labels(entry.provider, entry.model, error.reason).inc()
        self.breakers.record_failure(entry.provider, entry.model, error.breaker, f"{error.reason}: {error.message}"[:300])

    def _propagated(self, entry: Entry, attempts: list[Attempt], error: APIError, *,
                    recorded: bool = False) -> APIError:
        """The error the client gets now, with the chain walked so far (the caller raises it)."""
        if not recorded:
            metrics.llm_errors.labels(entry.provider, entry.model, error.reason).inc()
        if attempts:
            error.headers["X-Mana-LLM-Attempts"] = attempts_header(attempts)
            error.attempts = [a.to_api() for a in attempts]
        return error

    def _fall(self, attempts: list[Attempt], entry: Entry, reason: str, next_target: str) -> None:
        attempts.append(Attempt(entry.target, reason))
        metrics.fallbacks.labels(entry.target, next_target, reason).inc()

    def _exhausted(self, chain: tuple[Entry, ...], attempts: list[Attempt], breaker_skips: list[Entry]) -> APIError:
        """The error for a chain that ran out (the caller raises it): 429 when every
        attempt was rate-limited, else 503 with a Retry-After when breakers held them all."""
        error = self._ran_out(chain, attempts, breaker_skips)
        error.attempts = error.extra["attempts"]
        return error

    def _ran_out(self, chain: tuple[Entry, ...], attempts: list[Attempt], breaker_skips: list[Entry]) -> APIError:
        failures = [a for a in attempts if a.reason not in SKIP_REASONS]
        summary = "; ".join(f"{a.target}: {a.reason}" for a in attempts)
        headers = {"X-Mana-LLM-Attempts": attempts_header(attempts)}
        if failures and all(a.reason == "rate_limit" for a in failures):
            return errors.RateLimited(f"Every provider rate-limited this request ({summary}).", headers=headers,
                                      extra={"attempts": [a.to_api() for a in attempts]})
        if breaker_skips and len(breaker_skips) == len(chain):
            wait = self.breakers.retry_after([(e.provider, e.model) for e in breaker_skips])
            if wait is not None:
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return NoHealthyProvider(f"No provider could serve this request ({summary}).", headers=headers,
                                 extra={"attempts": [a.to_api() for a in attempts]})

    def finish(self, served: Served, usage: dict | None, *, completion: bool = True) -> None:
        """Latency and token metrics of a served request (for a stream: once it ended)."""
        provider_name, model = served.entry.provider, served.entry.model
        metrics.child(metrics.latency, provider_name, model).observe(max(self.clock() - served.started, 0.0))
        if usage:
            metrics.child(metrics.tokens, provider_name, model, "prompt").inc(usage.get("prompt_tokens") or 0)
            if completion:
                metrics.child(metrics.tokens, provider_name, model, "completion").inc(usage.get("completion_tokens") or 0)


def first_token_timeout(entry: Entry) -> float:
    """Seconds an attempt on ``entry`` may take to its first content token (the entry's own
    option, else FIRST_TOKEN_TIMEOUT)."""
    return entry.first_token_timeout or settings.FIRST_TOKEN_TIMEOUT


def _once(release: Callable[[], None]) -> Callable[[], None]:
    """A slot release that frees the slot once, however many paths call it."""
    done = False

    def release_once():
        nonlocal done
        if not done:
            done = True
            release()

    return release_once


class _FellOver(Exception):
    """Internal: this entry failed in a way that moves the walk on (``reason`` as in README#endpoints)."""

    def __init__(self, reason: str):
        self.reason = reason


router = Router()
