"""Usage reports (README#consumers): the one query over the hourly rows, with cost.

Used by ``GET /v1/usage`` (consumers.usage_api) and the admin's usage summary
(consumers.admin_usage). Rows are summed per group and per target underneath, so cost
is always computed per target: a target's part costs its tokens at the target's price;
a part with tokens and no price makes its row's ``cost`` null (unknown, never a silent 0);
a part with no tokens costs 0. What a process has not flushed yet (at most
USAGE_FLUSH_SECONDS) is not in the rows.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from django.db.models import Sum

from .models import UsageHour
from .prices import PriceSpec, current as current_prices

GROUPS = ("consumer", "model", "target", "hour")
DEFAULT_GROUPS = ("consumer", "model")
SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cache_hits")
MILLION = Decimal(1_000_000)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def part_cost(target: str, prompt: int, completion: int, prices: dict[str, PriceSpec]) -> Decimal | None:
    if not prompt and not completion:
        return Decimal(0)
    price = prices.get(target)
    if price is None:
        return None
    return (prompt * price.prompt + completion * price.completion) / MILLION


def usage_rows(since: datetime, until: datetime, *, consumer: str | None = None, model: str | None = None,
               group_by: tuple[str, ...] = DEFAULT_GROUPS) -> list[dict]:
    """Summed usage of the hours that overlap [since, until), one dict per group (sorted by
    the group fields): the group fields, the sums, and ``cost`` in USD or None."""
    rows = UsageHour.objects.filter(hour__gte=hour_floor(since), hour__lt=until)
    if consumer is not None:
        rows = rows.filter(consumer=consumer)
    if model is not None:
        rows = rows.filter(model=model)
    fields = list(dict.fromkeys([*group_by, "target"]))
    parts = rows.values(*fields).annotate(**{f"sum_{name}": Sum(name) for name in SUMS}).order_by(*fields)
    prices = current_prices()
    groups: dict[tuple, dict] = {}
    for part in parts:
        key = tuple(part[name] for name in group_by)
        row = groups.get(key)
        if row is None:
            row = groups[key] = {name: (iso(part[name]) if name == "hour" else part[name]) for name in group_by}
            row.update({name: 0 for name in SUMS}, cost=Decimal(0))
        for name in SUMS:
            row[name] += part[f"sum_{name}"] or 0
        cost = part_cost(part["target"], part["sum_prompt_tokens"] or 0, part["sum_completion_tokens"] or 0, prices)
        row["cost"] = None if cost is None or row["cost"] is None else row["cost"] + cost
    result = list(groups.values())
    for row in result:
        if row["cost"] is not None:
            row["cost"] = float(round(row["cost"], 8))
    return result


def summary(consumer: str, now: datetime | None = None) -> dict[str, list[dict]]:
    """The admin's view of one consumer: by model over the last 24 hours and this UTC month."""
    now = now or datetime.now(timezone.utc)
    month = now.astimezone(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return {"last 24 hours": usage_rows(now - timedelta(hours=24), now, consumer=consumer, group_by=("model",)),
            "this month": usage_rows(month, now, consumer=consumer, group_by=("model",))}
