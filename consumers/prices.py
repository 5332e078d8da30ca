"""Prices per target (README#consumers): the one validator, shared by the aliases file's
``prices:`` (routing.aliasfile) and the admin (consumers.admin_usage).

USD per million tokens, ``{provider/model: {prompt: 0.05, completion: 0.08}}``. Stored as
decimals with six places (``Price``), so a value must be exact in six places and under a
million dollars: what is imported is what is exported.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from manallm.text import shown

MAX_TARGET_CHARS = 200  # Price.target's column
MAX_PRICE = Decimal("999999.999999")  # Price's DecimalField(max_digits=12, decimal_places=6)
PLACES = Decimal("0.000001")
FIELDS = ("prompt", "completion")


class PriceError(ValueError):
    def __init__(self, reason: str, *, field: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


@dataclass(frozen=True)
class PriceSpec:
    target: str
    prompt: Decimal
    completion: Decimal

    def to_data(self) -> dict:
        """The YAML form: numbers, integers where whole (round-trips with ``validate_price``)."""
        return {name: _number(getattr(self, name)) for name in FIELDS}


def _number(value: Decimal) -> int | float:
    value = value.normalize()
    return int(value) if value == value.to_integral_value() else float(value)


def validate_target(target: object, field: str = "target") -> str:
    if not isinstance(target, str) or "/" not in target or not target.partition("/")[0] \
            or not target.partition("/")[2].strip():
        raise PriceError(f"{shown(target)} must be a 'provider/model' string", field=field)
    if len(target) > MAX_TARGET_CHARS:
        raise PriceError(f"is longer than {MAX_TARGET_CHARS} characters", field=field)
    if not target.isprintable() or target != target.strip():
        raise PriceError(f"{shown(target)} holds an unprintable character or padding", field=field)
    return target


def validate_amount(value: object, field: str) -> Decimal:
    """A non-negative number of USD per million tokens, exact in six decimal places."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise PriceError(f"{shown(value)} must be a number (USD per million tokens)", field=field)
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PriceError(f"{shown(value)} must be a number (USD per million tokens)", field=field) from None
    if not amount.is_finite() or amount < 0 or amount > MAX_PRICE:
        raise PriceError(f"{shown(value)} must be between 0 and {MAX_PRICE}", field=field)
    if amount != amount.quantize(PLACES):
        raise PriceError(f"{shown(value)} has more than six decimal places", field=field)
    return amount.quantize(PLACES)


def validate_price(target: object, body: object, field: str = "prices") -> PriceSpec:
    """One price: its target and ``{"prompt", "completion"}`` (both required)."""
    where = f"{field}.{target}" if isinstance(target, str) and target.isprintable() and len(target) <= 200 else field
    validate_target(target, field=where)
    if not isinstance(body, dict):
        raise PriceError("must be a mapping with 'prompt' and 'completion'", field=where)
    unknown = sorted(str(key)[:80] for key in body if key not in FIELDS)
    if unknown:
        raise PriceError(f"unknown field(s) {', '.join(map(shown, unknown))}; allowed: prompt, completion",
                         field=where)
    for name in FIELDS:
        if name not in body:
            raise PriceError("is required", field=f"{where}.{name}")
    return PriceSpec(target, *(validate_amount(body[name], f"{where}.{name}") for name in FIELDS))


def validate_prices(data: object, field: str = "prices") -> dict[str, PriceSpec]:
    """The aliases file's ``prices:`` mapping (absent or empty: no prices)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PriceError("must be a mapping of 'provider/model' to {prompt, completion}", field=field)
    return {target: validate_price(target, body, field) for target, body in data.items()}


def current() -> dict[str, PriceSpec]:
    """The database's prices by target."""
    from .models import Price

    return {price.target: PriceSpec(price.target, price.prompt, price.completion) for price in Price.objects.all()}
