"""The one validator of consumer data (README#consumers), used by the management API's
serializer and the admin's form alike.

``validate_consumer`` checks every field a consumer has and returns them normalised;
``parse_time`` reads a key's ``expires_at``. Each raises ``ConsumerError`` naming the
field, so the API answers a 400 with ``param`` set and the admin marks the field.
"""
import re
from datetime import UTC, datetime

from manallm.text import shown, unprintable

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")  # fullmatch: "$" would let a final "\n" in
# The built-in consumers (README#consumers): requests are attributed to them without a row.
RESERVED_NAMES = frozenset({"env", "admin", "anonymous"})
FIELDS = ("name", "description", "active", "allowed_models", "rpm", "tpm", "max_concurrent", "token_budget",
          "budget_period")
LIMITS = {"rpm": 2**31 - 1, "tpm": 2**31 - 1, "max_concurrent": 2**31 - 1, "token_budget": 2**63 - 1}  # column bounds
BUDGET_PERIODS = ("day", "month")
MAX_DESCRIPTION_CHARS = 2000
MAX_PATTERNS = 100
MAX_PATTERN_CHARS = 300  # a requested model name as usage rows hold it


class ConsumerError(ValueError):
    """A bad consumer field: ``field`` names it, the message says why (and names it too)."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


def validate_consumer(data: dict, *, name: str | None = None) -> dict:
    """Every field of one consumer, checked and normalised (missing optional fields take
    their defaults). ``name`` is the consumer's name when it comes from elsewhere (the
    URL of a PATCH); otherwise ``data["name"]`` is required."""
    if not isinstance(data, dict):
        raise ConsumerError("body", "must be a JSON object")
    unknown = sorted(field_name(key) for key in data if key not in FIELDS)
    if unknown:
        raise ConsumerError(unknown[0], f"unknown field; a consumer has {', '.join(FIELDS)}")
    clean = {"name": check_name(data.get("name") if name is None else name)}
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ConsumerError("description", "must be a string")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise ConsumerError("description", f"at most {MAX_DESCRIPTION_CHARS} characters")
    if bad := unprintable(description, free_text=True):
        raise ConsumerError("description", f"holds a control character ({bad})")
    clean["description"] = description
    active = data.get("active", True)
    if not isinstance(active, bool):
        raise ConsumerError("active", "must be true or false")
    clean["active"] = active
    clean["allowed_models"] = check_patterns(data.get("allowed_models") or [])
    for field, bound in LIMITS.items():
        clean[field] = _limit(field, data.get(field), bound)
    period = data.get("budget_period") or ""
    if period not in ("", *BUDGET_PERIODS):
        raise ConsumerError("budget_period", "must be 'day' or 'month'")
    if clean["token_budget"] is not None and not period:
        raise ConsumerError("budget_period", "is required with token_budget: 'day' or 'month'")
    if clean["token_budget"] is None and period:
        raise ConsumerError("budget_period", "applies only with a token_budget")
    clean["budget_period"] = period
    return clean


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ConsumerError("name", "is required: lower-case letters, digits, '_', '.', '-' (at most 64)")
    if not NAME.fullmatch(name):
        raise ConsumerError("name", f"{shown(name)} must match [a-z0-9][a-z0-9_.-]{{0,63}}")
    if name in RESERVED_NAMES:
        raise ConsumerError("name", f"'{name}' is a built-in consumer ({', '.join(sorted(RESERVED_NAMES))})")
    return name


def check_patterns(patterns: object) -> list[str]:
    """A scope (README#consumers): exact model names, or prefixes ending in ``*``."""
    if not isinstance(patterns, list):
        raise ConsumerError("allowed_models", "must be a list of model names or prefixes ending in '*'")
    if len(patterns) > MAX_PATTERNS:
        raise ConsumerError("allowed_models", f"at most {MAX_PATTERNS} patterns")
    for index, pattern in enumerate(patterns):
        where = f"allowed_models[{index}]"
        if not isinstance(pattern, str) or not pattern.strip():
            raise ConsumerError("allowed_models", f"{where} must be a non-empty string")
        if len(pattern) > MAX_PATTERN_CHARS or unprintable(pattern) or pattern != pattern.strip():
            raise ConsumerError("allowed_models", f"{where} {shown(pattern)} must be printable, without "
                                                  f"surrounding spaces, at most {MAX_PATTERN_CHARS} characters")
        if "*" in pattern[:-1]:
            raise ConsumerError("allowed_models", f"{where} {shown(pattern)}: '*' may only end a pattern")
        if pattern in patterns[:index]:
            raise ConsumerError("allowed_models", f"{where} {shown(pattern)} is listed twice")
    return list(patterns)


def _limit(field: str, value: object, bound: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= bound:
        raise ConsumerError(field, f"must be a positive whole number (at most {bound}) or null for no limit")
    return value


def parse_time(field: str, value: object) -> datetime | None:
    """A time given as ISO-8601 (a naive one is UTC) or Unix seconds; None for null."""
    if value is None:
        return None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str) and value.strip():
            text = value.strip()
            when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
            return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise ConsumerError(field, "must be an ISO-8601 time or Unix seconds")


def field_name(key: object) -> str:
    """An unknown field's name as a message and ``param`` may carry it (escaped, cut)."""
    text = key if isinstance(key, str) and key.isprintable() else repr(key)
    return text[:40]
