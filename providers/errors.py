"""The one error taxonomy every adapter raises (README#endpoints, docs/architecture.md#routing).

Each class says three things the router acts on and nothing else:
- ``action``: ``retry`` (try the same entry again, then fall over), ``fallover`` (next
  entry at once) or ``propagate`` (answer the client now, no fallback);
- ``breaker``: which breaker a failure counts against (``provider``, ``deployment`` or
  ``None`` for none);
- ``reason``: the word used in ``X-Mana-LLM-Attempts``, the 503 attempts list and metrics.
And, as an APIError, the HTTP status and OpenAI ``type`` a client sees when it propagates.
"""
from manallm.errors import APIError

RETRY = "retry"
FALLOVER = "fallover"
PROPAGATE = "propagate"


class ProviderError(APIError):
    status = 502
    type = "upstream_error"
    action = PROPAGATE
    breaker = None
    reason = "upstream_error"


# --- retryable on the same entry, then fall over ------------------------------------


class UpstreamServerError(ProviderError):
    """A 5xx answer."""

    action = RETRY
    breaker = "deployment"

    def __init__(self, message, *, upstream_status=500, **kwargs):
        super().__init__(message, **kwargs)
        self.upstream_status = upstream_status
        self.reason = f"http_{upstream_status}"


class RateLimited(ProviderError):
    """A 429; ``retry_after`` is the upstream's Retry-After in seconds, if it gave one."""

    status = 429
    type = "rate_limit"
    code = "rate_limit_exceeded"
    action = RETRY
    breaker = "deployment"
    reason = "rate_limit"

    def __init__(self, message, *, retry_after=None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ProtocolError(ProviderError):
    """The connection was reset, or the answer was malformed, before it started."""

    action = RETRY
    breaker = "deployment"
    reason = "protocol_error"


# --- fall over without retrying the same entry ---------------------------------------


class ConnectError(ProviderError):
    """Refused, DNS failure or connect timeout: the provider itself is unreachable."""

    action = FALLOVER
    breaker = "provider"
    reason = "connect_error"


class Timeout(ProviderError):
    """The answer took longer than the provider's read timeout."""

    status = 504
    action = FALLOVER
    breaker = "deployment"
    reason = "timeout"


class FirstTokenTimeout(ProviderError):
    """No first content token (or, for a plain call, no answer) in FIRST_TOKEN_TIMEOUT."""

    status = 504
    action = FALLOVER
    breaker = "deployment"
    reason = "first_token_timeout"


class ContextLengthExceeded(ProviderError):
    """The prompt does not fit this model; the next entry may have a larger window."""

    status = 400
    type = "invalid_request_error"
    code = "context_length_exceeded"
    action = FALLOVER
    breaker = None
    reason = "context_length_exceeded"


# --- propagate at once, breakers untouched --------------------------------------------


class UpstreamAuthError(ProviderError):
    """The upstream refused our key: an operator problem, not the caller's."""

    status = 502
    type = "auth"
    code = "upstream_auth_failed"
    reason = "auth"


class Blocked(ProviderError):
    """The provider refused the content (safety / content policy)."""

    status = 422
    type = "blocked"
    code = "content_blocked"
    reason = "blocked"


class Truncated(ProviderError):
    """The provider stopped at max_tokens and reported it as an error (nothing to return)."""

    status = 502
    type = "truncated"
    code = "max_tokens"
    reason = "truncated"


class CapabilityError(ProviderError):
    """The request needs something this model cannot do (tools, remote images, ...)."""

    status = 400
    type = "capability"
    code = "unsupported_capability"
    reason = "capability"


class UpstreamRequestError(ProviderError):
    """Any other 4xx: the upstream rejected the request; its message is passed on."""

    status = 400
    type = "invalid_request_error"
    reason = "invalid_request"

    def __init__(self, message, *, upstream_status=400, **kwargs):
        kwargs.setdefault("status", upstream_status if 400 <= upstream_status < 500 else 400)
        if upstream_status == 404:  # README#endpoints: an unknown model is 404 model_not_found
            kwargs.setdefault("type", "model_not_found")
        super().__init__(message, **kwargs)
        self.upstream_status = upstream_status
        self.reason = f"http_{upstream_status}"


def from_status(status: int, message: str, *, code: str | None = None, retry_after: float | None = None,
                **kwargs) -> ProviderError:
    """Classify an upstream HTTP error answer; shared by every HTTP adapter."""
    text = f"{message} {code or ''}".lower()
    if status == 429:
        return RateLimited(message, retry_after=retry_after, **kwargs)
    if status >= 500:
        return UpstreamServerError(message, upstream_status=status, **kwargs)
    if status in (401, 403):
        return UpstreamAuthError(f"The upstream rejected manallm's credentials ({status}): {message}", **kwargs)
    if "context_length" in text or "context length" in text or "maximum context" in text:
        return ContextLengthExceeded(message, **kwargs)
    if "content_policy" in text or "content_filter" in text or "safety" in text:
        return Blocked(message, **kwargs)
    return UpstreamRequestError(message, upstream_status=status, code=code, **kwargs)


def parse_retry_after(value: object) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form), or None."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return max(seconds, 0.0)
