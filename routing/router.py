"""The fallback engine (SPEC §6): one walk down a chain for chat, streams and embeddings.

``Router.walk`` resolves the model name, skips entries that cannot serve, tries the rest
with the retry / fall-over / propagate policy each ``providers.errors`` class carries,
and records every outcome on the breakers and in the metrics. What one attempt *is*
differs by call type and is passed in as a function; everything else is shared.
"""
import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass, field

from django.conf import settings

from health.board import breakers as default_breakers
from manallm import metrics
from manallm.errors import APIError
from providers import errors
from providers import registry as default_providers
from providers.base import has_content

from .table import aliases as default_aliases

logger = logging.getLogger("manallm.router")


@dataclass(frozen=True)
class Attempt:
    target: str
    reason: str

    def to_api(self):
        return {"model": self.target, "reason": self.reason}


def attempts_header(attempts):
    return ", ".join(f"{attempt.target}={attempt.reason}" for attempt in attempts)


class NoHealthyProvider(APIError):
    status = 503
    type = "no_healthy_provider"
    code = "no_healthy_provider"


@dataclass
class Served:
    """A request some entry answered: the answer plus how the chain got there."""

    entry: object
    alias: str | None
    attempts: list
    value: object
    started: float = 0.0
    release: object = None

    @property
    def target(self):
        return self.entry.target

    def headers(self):
        headers = {"X-Mana-LLM-Resolved": self.target}
        if self.attempts:
            headers["X-Mana-LLM-Attempts"] = attempts_header(self.attempts)
        return headers


@dataclass
class Started:
    """A stream whose first content token is in hand (or that ended without any)."""

    buffered: list
    iterator: object = None
    first_token_at: float | None = None
    chunks: list = field(default_factory=list)


class Router:
    def __init__(self, *, aliases=None, providers=None, breakers=None, sleep=asyncio.sleep, jitter=random.uniform,
                 clock=time.monotonic):
        self.aliases = aliases or default_aliases
        self.providers = providers or default_providers
        self.breakers = breakers or default_breakers
        self.sleep = sleep
        self.jitter = jitter
        self.clock = clock

    # --- the three call types ---------------------------------------------------------

    async def chat(self, body):
        async def attempt(provider, entry, timeout):
            async with asyncio.timeout(timeout):
                return await provider.chat(entry.model, body)

        served = await self.walk(body, attempt, streaming=False)
        answer = served.value
        answer["model"] = served.target
        self._finish(served, answer.get("usage"))
        return served

    async def embed(self, body):
        async def attempt(provider, entry, timeout):
            async with asyncio.timeout(timeout):
                return await provider.embed(entry.model, body)

        served = await self.walk(body, attempt, streaming=False, capability_check=False)
        served.value["model"] = served.target
        self._finish(served, served.value.get("usage"), completion=False)
        return served

    async def chat_stream(self, body):
        """Serve a stream: returns once its first content token is in hand.

        The returned Served's ``value`` is an async iterator of events (chunk dicts, and
        an ``{"error": ...}`` dict if the committed stream fails); iterate it to the end
        or ``aclose`` it, which cancels the upstream and frees the concurrency slot.
        """

        async def attempt(provider, entry, timeout):
            return await self._first_token(provider.chat_stream(entry.model, body).__aiter__(), timeout)

        served = await self.walk(body, attempt, streaming=True)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        served.value = Relay(self, served, include_usage)
        return served

    # --- the walk ----------------------------------------------------------------------

    async def walk(self, body, attempt, *, streaming, capability_check=True):
        alias, chain = self.aliases.resolve(body.get("model"))
        requested = ("mana", alias.partition("/")[2]) if alias else (chain[0].provider, chain[0].model)
        metrics.llm_requests.labels(*requested, "true" if streaming else "false").inc()
        wants_tools = capability_check and bool(body.get("tools"))
        attempts, breaker_skips = [], []

        for index, entry in enumerate(chain):
            next_target = chain[index + 1].target if index + 1 < len(chain) else ""
            provider = self.providers.get(entry.provider)
            reason = self._skip_reason(provider, entry)
            if reason is None and wants_tools and not await provider.supports_tools(entry.model):
                self._refuse(entry, attempts, errors.CapabilityError(
                    f"{entry.target} cannot call tools; the request carries 'tools'. Use a tool-capable model "
                    "or alias rather than have the tools silently dropped.", param="tools"))
            if reason is None and not provider.try_acquire():
                reason = "saturated"
            if reason is not None:
                if reason == "cache-unhealthy":
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
                metrics.alias_resolved.labels(alias, entry.target).inc()
            return Served(entry, alias, attempts, value, started, _once(provider.release) if streaming else None)

        raise self._exhausted(chain, attempts, breaker_skips)

    def _skip_reason(self, provider, entry):
        if provider is None:
            return "unconfigured"
        if not entry.enabled:
            return "disabled"
        return self.breakers.skip_reason(entry.provider, entry.model)

    async def _try_entry(self, provider, entry, attempt, attempts):
        """Try one entry, retrying what may be retried; returns (value, start time)."""
        timeout = entry.first_token_timeout or settings.FIRST_TOKEN_TIMEOUT
        for retry in range(settings.RETRIES + 1):
            started = self.clock()
            try:
                value = await attempt(provider, entry, timeout)
            except TimeoutError:
                error = errors.FirstTokenTimeout(f"{entry.target} gave no first token within {timeout:g} s.")
            except errors.ProviderError as exc:
                error = exc
            except Exception:
                # An unknown failure is a bug somewhere, not an outage: never fall over on it.
                logger.exception("unexpected error from %s", entry.target)
                metrics.llm_errors.labels(entry.provider, entry.model, "unexpected").inc()
                raise
            else:
                self.breakers.record_success(entry.provider, entry.model)
                return value, started

            self._record_failure(entry, error)
            if error.action == errors.PROPAGATE:
                self._refuse(entry, attempts, error, recorded=True)
            if error.action == errors.FALLOVER or retry == settings.RETRIES:
                raise _FellOver(error.reason)
            if self.breakers.skip_reason(entry.provider, entry.model):
                raise _FellOver(error.reason)  # these attempts tripped its breaker: stop asking it
            delay = self._retry_delay(error, retry)
            if delay is None:
                raise _FellOver(error.reason)
            metrics.retries.labels(entry.provider, entry.model, error.reason).inc()
            logger.info("retrying %s in %.2f s after %s", entry.target, delay, error.reason)
            await self.sleep(delay)
        raise AssertionError("unreachable")

    def _retry_delay(self, error, retry):
        """Seconds to wait before retrying, or None to fall over at once."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return retry_after if retry_after <= settings.RETRY_AFTER_MAX else None
        return 0.5 * (2 ** retry) * self.jitter(0.75, 1.25)

    def _record_failure(self, entry, error):
        metrics.llm_errors.labels(entry.provider, entry.model, error.reason).inc()
        self.breakers.record_failure(entry.provider, entry.model, error.breaker, f"{error.reason}: {error.message}"[:300])

    def _refuse(self, entry, attempts, error, *, recorded=False):
        """Propagate: the client gets this error now, with the chain walked so far."""
        if not recorded:
            metrics.llm_errors.labels(entry.provider, entry.model, error.reason).inc()
        if attempts:
            error.headers["X-Mana-LLM-Attempts"] = attempts_header(attempts)
        raise error

    def _fall(self, attempts, entry, reason, next_target):
        attempts.append(Attempt(entry.target, reason))
        metrics.fallbacks.labels(entry.target, next_target, reason).inc()

    def _exhausted(self, chain, attempts, breaker_skips):
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

    # --- streams ----------------------------------------------------------------------

    async def _first_token(self, iterator, timeout):
        """Read until the first content token, within ``timeout``."""
        buffered = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        chunk = await anext(iterator)
                    except StopAsyncIteration:
                        return Started(buffered)  # an empty upstream stream is a success
                    buffered.append(chunk)
                    if has_content(chunk):
                        return Started(buffered, iterator, self.clock())
        except BaseException:
            await _close(iterator)
            raise

    async def _relay(self, served, started, include_usage):
        """The committed stream: buffered chunks, then the rest under the idle timeout."""
        target = served.target
        provider_name, model = served.entry.provider, served.entry.model
        usage = None
        if started.first_token_at is not None:
            metrics.time_to_first_token.labels(provider_name, model).observe(started.first_token_at - served.started)
        try:
            for chunk in started.buffered:
                usage = chunk.get("usage") or usage
                if _forward(chunk, include_usage):
                    chunk["model"] = target
                    yield chunk
            if started.iterator is None:
                return
            while True:
                try:
                    async with asyncio.timeout(settings.STREAM_IDLE_TIMEOUT):
                        chunk = await anext(started.iterator)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    error = errors.Timeout(f"{target} went silent for {settings.STREAM_IDLE_TIMEOUT:g} s mid-stream.")
                    yield self._stream_failed(served, error)
                    return
                except errors.ProviderError as error:
                    yield self._stream_failed(served, error)
                    return
                usage = chunk.get("usage") or usage
                if _forward(chunk, include_usage):
                    chunk["model"] = target
                    yield chunk
        finally:
            if started.iterator is not None:
                await _close(started.iterator)
            served.release()
            self._finish(served, usage)

    def _stream_failed(self, served, error):
        entry = served.entry
        logger.warning("stream from %s failed after its first token: %s", entry.target, error.message)
        metrics.llm_errors.labels(entry.provider, entry.model, error.reason).inc()
        if error.breaker:
            self.breakers.record_failure(entry.provider, entry.model, "deployment", f"{error.reason}: {error.message}"[:300])
        return {"error": {"message": f"The stream from {entry.target} was cut short: {error.message}",
                          "type": error.type if error.type != "upstream_error" else "stream_error",
                          "code": error.reason, "param": None}}

    def _finish(self, served, usage, *, completion=True):
        provider_name, model = served.entry.provider, served.entry.model
        metrics.latency.labels(provider_name, model).observe(max(self.clock() - served.started, 0.0))
        if usage:
            metrics.tokens.labels(provider_name, model, "prompt").inc(usage.get("prompt_tokens") or 0)
            if completion:
                metrics.tokens.labels(provider_name, model, "completion").inc(usage.get("completion_tokens") or 0)


class Relay:
    """The events of a committed stream (see ``Router.chat_stream``).

    ``aclose`` frees the upstream and the concurrency slot even when iteration never
    began (an async generator that never started would not run its ``finally``).
    """

    def __init__(self, router, served, include_usage):
        self._started = served.value
        self._served = served
        self._events = router._relay(served, self._started, include_usage)
        self._began = False

    def __del__(self):
        # Safety net: a response dropped before iteration (the client left between the
        # first token and the response start) still frees its slot and its upstream.
        if not self._began:
            self._served.release()
            if self._started.iterator is not None:
                try:
                    asyncio.get_running_loop().create_task(_close(self._started.iterator))
                except RuntimeError:
                    pass

    def __aiter__(self):
        return self

    async def __anext__(self):
        self._began = True
        return await anext(self._events)

    async def aclose(self):
        if self._began:
            await self._events.aclose()
            return
        self._began = True
        if self._started.iterator is not None:
            await _close(self._started.iterator)
        self._served.release()


SKIP_REASONS = frozenset({"unconfigured", "cache-unhealthy", "disabled", "saturated"})


def _once(release):
    """A slot release that frees the slot once, however many paths call it."""
    done = False

    def release_once():
        nonlocal done
        if not done:
            done = True
            release()

    return release_once


class _FellOver(Exception):
    def __init__(self, reason):
        self.reason = reason


def _forward(chunk, include_usage):
    """Usage-only chunks go out only when the client asked (stream_options.include_usage)."""
    if chunk.get("choices"):
        if not include_usage:
            chunk.pop("usage", None)
        return True
    return include_usage and bool(chunk.get("usage"))


async def _close(iterator):
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            logger.debug("closing an upstream stream raised", exc_info=True)


router = Router()
