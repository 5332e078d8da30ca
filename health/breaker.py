"""Circuit-breaker state and transitions (docs/architecture.md#routing): pure logic, no database, clock injected.

A ``Breaker`` is an immutable value. Every transition returns a new object plus whether
the *persisted* state changed, so callers swap objects atomically (the event loop reads
them while the DB thread merges rows from other processes) and write only on a change.

Statuses, for a given ``now``:
- ``healthy``   closed: ``unhealthy_until`` is None;
- ``unhealthy`` open: ``now < unhealthy_until``, calls are skipped;
- ``half_open`` ``unhealthy_until`` set and ``now >= unhealthy_until``: calls are let
  through; the next recorded result decides (success closes, failure re-opens).

Failures are consecutive failed attempts (retries included). Below the threshold the
breaker stays closed; a failure that brings (or finds) the count at or above the
threshold opens it for a full window from that failure, ``now + backoff`` — the trip, a
failure while half-open, and a straggler failure while already open alike.
"""
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from providers.base import redact_urls

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
HALF_OPEN = "half_open"

LAST_ERROR_MAX = 300


def breaker_key(provider: str, model: str = "") -> str:
    """``"ollama"`` for a provider breaker, ``"openrouter/anthropic/claude-3-haiku"`` for a deployment."""
    return f"{provider}/{model}" if model else provider


@dataclass(frozen=True)
class Breaker:
    key: str
    provider: str
    model: str = ""
    consecutive_failures: int = 0
    last_error: str = ""
    last_check: float | None = None
    unhealthy_until: float | None = None
    updated_at: float = 0.0

    @classmethod
    def new(cls, provider: str, model: str = "") -> "Breaker":
        return cls(key=breaker_key(provider, model), provider=provider, model=model or "")

    @property
    def level(self) -> str:
        return "deployment" if self.model else "provider"

    def status(self, now: float) -> str:
        if self.unhealthy_until is None:
            return HEALTHY
        return UNHEALTHY if now < self.unhealthy_until else HALF_OPEN

    def allows(self, now: float) -> bool:
        """Whether a call may go through (closed or half-open)."""
        return self.status(now) != UNHEALTHY

    def is_pristine(self) -> bool:
        """Closed with no failures: the state of a breaker that has no row."""
        return self.consecutive_failures == 0 and self.unhealthy_until is None

    def record_success(self, now: float) -> tuple["Breaker", bool]:
        """-> (breaker, changed). A success on a pristine breaker changes nothing (no write)."""
        if self.is_pristine():
            return self, False
        return replace(self, consecutive_failures=0, unhealthy_until=None, last_check=now, updated_at=now), True

    def record_failure(self, now: float, error_text: str, threshold: int, backoff: float) -> tuple["Breaker", bool]:
        """-> (breaker, changed); a failure always changes the persisted state."""
        failures = self.consecutive_failures + 1
        unhealthy_until = self.unhealthy_until
        if failures >= max(int(threshold), 1):
            unhealthy_until = now + float(backoff)
        return replace(
            self,
            consecutive_failures=failures,
            last_error=clean_error(error_text),
            last_check=now,
            unhealthy_until=unhealthy_until,
            updated_at=now,
        ), True

    def close(self, now: float) -> tuple["Breaker", bool]:
        """Operator reset: closed, count cleared; -> (breaker, changed)."""
        return self.record_success(now)

    def touch(self, now: float) -> tuple["Breaker", bool]:
        """A success that must be persisted even when nothing else changed (the prober's
        checks, so ``last_check`` shows the provider is being watched); -> (breaker, True)."""
        return replace(self, consecutive_failures=0, unhealthy_until=None, last_check=now, updated_at=now), True

    def as_dict(self, now: float) -> dict:
        """The fields the health API shows (README#endpoints)."""
        return {
            "status": self.status(now),
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error or None,
            "last_check_unix": self.last_check,
            "unhealthy_until_unix": self.unhealthy_until,
        }


# (pattern, replacement): a bearer token or key=value keeps its label; a bare key-shaped
# token (sk-..., gsk_..., AIza...) goes entirely.
_SECRET_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[^\s,;\"']+"), r"\1***"),
    (re.compile(r"(?i)((?:api[_-]?key|x-api-key|\bkey|token|secret|password|authorization)[\"']?\s*[=:]\s*[\"']?)"
                r"(?!bearer\b)[^\s,;&\"']+"), r"\1***"),
    (re.compile(r"\b(?:sk|gsk|rk|sk-or-v1|AIza)[-_A-Za-z0-9]{12,}"), "***"),
]


def clean_error(error: BaseException | str | None, secrets: Iterable[str] = ()) -> str:
    """A short, single-line error text with anything that looks like a credential removed
    (URLs lose their userinfo and query string: providers.base.redact_urls)."""
    if error is None:
        return ""
    if isinstance(error, BaseException):
        reason = getattr(error, "reason", None)
        message = str(getattr(error, "message", None) or error) or type(error).__name__
        text = f"{reason}: {message}" if reason and not message.startswith(str(reason)) else message
    else:
        text = str(error)
    text = redact_urls(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    text = " ".join(text.split())
    if len(text) > LAST_ERROR_MAX:
        text = text[: LAST_ERROR_MAX - 1] + "…"
    return text
