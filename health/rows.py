"""The breaker board's rows (``health.models.Breaker``): read, upsert by recency, reset.

Plain synchronous ORM calls, run on ``manallm.background``'s database thread (or an
admin's sync thread); the board decides when, this module only how. A row is written
only when it is not older than what the database holds, so two processes racing on one
breaker converge on the newest state.
"""
from django.db import IntegrityError, transaction
from django.db.models import Q

from .breaker import Breaker
from .models import Breaker as Row

FIELDS = ("key", "provider", "model", "consecutive_failures", "last_error", "last_check", "unhealthy_until",
          "updated_at")


def read_rows() -> list[Breaker]:
    """Every persisted breaker, as the pure ``Breaker`` values the board holds."""
    return [Breaker(**dict(zip(FIELDS, values))) for values in Row.objects.values_list(*FIELDS)]


def _row_fields(state: Breaker) -> dict:
    """Every persisted field but the key (the upsert's lookup)."""
    return {name: getattr(state, name) for name in FIELDS if name != "key"}


def write_row(state: Breaker) -> bool:
    """Upsert one breaker row, unless the database already holds a newer one (which the
    next poll adopts). Returns whether the row was written."""
    fields = _row_fields(state)
    if Row.objects.filter(key=state.key, updated_at__lte=state.updated_at).update(**fields):
        return True
    try:
        with transaction.atomic():
            Row.objects.create(key=state.key, **fields)
    except IntegrityError:
        return False  # the row exists and is newer
    return True


def reset_rows(filters: dict, now: float) -> int:
    """Close the matching rows that are not already closed (an operator reset wins)."""
    return (
        Row.objects.filter(**filters)
        .filter(Q(consecutive_failures__gt=0) | Q(unhealthy_until__isnull=False))
        .update(consecutive_failures=0, unhealthy_until=None, last_check=now, updated_at=now)
    )
