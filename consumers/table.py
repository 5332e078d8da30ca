"""The consumers each process serves from memory (README#consumers).

``consumers.snapshot`` is an immutable ``Snapshot`` swapped whole on reload, read by the
request path without a lock or a query: keys by their SHA-256 hash, consumers by name,
prices by target. Reloaded when the ``Revision`` counter moved (``poll``, run by
manallm.background off the request path) or right after this process committed a change
(``invalidate``, from consumers.signals) — the same propagation as the alias table, so a
revoked key is refused by every process within a second.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from manallm.revision import RevisionedTable

logger = logging.getLogger("manallm.consumers")

KEY_PREFIX = "mk-"


def key_hash(key: str) -> str:
    """The stored form of a key: its SHA-256, hex (a key is 240 random bits: no salt needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ConsumerView:
    """One consumer as the request path sees it (built-ins have no limits and no scope)."""

    name: str
    active: bool = True
    allowed_models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    token_budget: int | None = None
    budget_period: str = ""


@dataclass(frozen=True)
class KeyView:
    consumer: str
    prefix: str
    expires_at: float | None = None  # Unix seconds
    revoked: bool = False


@dataclass(frozen=True)
class Snapshot:
    revision: int = -1
    consumers: dict[str, ConsumerView] = field(default_factory=dict)
    keys: dict[str, KeyView] = field(default_factory=dict)  # by SHA-256 hex
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)  # target -> (prompt, completion) USD/M


BUILT_IN = {name: ConsumerView(name) for name in ("env", "admin", "anonymous")}


class ConsumerTable(RevisionedTable):
    def __init__(self) -> None:
        super().__init__(Snapshot())

    def __str__(self) -> str:
        return "consumers"

    @property
    def counter(self):
        """The revision this table follows (its model, imported once the apps are loaded)."""
        from .models import Revision

        return Revision

    def read(self, revision: int) -> Snapshot:
        """Every consumer, key and price, as the request path reads them."""
        from .models import Consumer, ConsumerKey, Price

        views = {}
        for row in Consumer.objects.all():
            views[row.name] = ConsumerView(
                row.name, row.active, tuple(row.allowed_models or ()), row.rpm, row.tpm, row.max_concurrent,
                row.token_budget, row.budget_period or "")
        keys = {}
        for key in ConsumerKey.objects.select_related("consumer"):
            keys[key.hash] = KeyView(key.consumer.name, key.prefix,
                                     key.expires_at.timestamp() if key.expires_at else None,
                                     key.revoked_at is not None)
        prices = {price.target: (float(price.prompt), float(price.completion)) for price in Price.objects.all()}
        return Snapshot(revision, views, keys, prices)

    # --- the request path -------------------------------------------------------------

    @property
    def any_keys(self) -> bool:
        """Whether any consumer key exists (then the gateway is no longer open to keyless calls)."""
        return bool(self.snapshot.keys)

    def get(self, name: str) -> ConsumerView | None:
        return self.snapshot.consumers.get(name) or BUILT_IN.get(name)

    def key(self, key: str) -> KeyView | None:
        """The key's record, or None when it is not a consumer key (cheap: one hash, one lookup)."""
        if not key.startswith(KEY_PREFIX):
            return None
        return self.snapshot.keys.get(key_hash(key))

    def price(self, target: str) -> tuple[float, float] | None:
        return self.snapshot.prices.get(target)

    @staticmethod
    def now() -> float:
        return time.time()


consumers = ConsumerTable()
