"""Sync between an aliases YAML file and the database (README#commands, README#aliases-file).

``read`` parses and validates, ``plan`` diffs against the database, ``apply`` writes a
plan in one transaction; ``dump`` is the export. Import, --dry-run, SIGHUP and
first start all go through these. The file's ``prices:`` (README#consumers) travel with
the aliases: validated by consumers.prices, diffed, written in the same transaction.
"""
import logging
from dataclasses import dataclass, field
from typing import TextIO

import yaml
from django.db import transaction

from consumers.models import Price
from consumers.prices import PriceError, PriceSpec, current as current_prices, validate_prices

from .models import Alias
from .validators import AliasDocument, AliasError, AliasSpec, validate_document

logger = logging.getLogger("manallm.routing")


def read(path: str) -> tuple[AliasDocument, dict[str, PriceSpec]]:
    """Parse and validate a file: its aliases and its prices; raises AliasError naming what is wrong."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise AliasError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise AliasError(f"{path} is not valid YAML: {exc}") from exc
    prices = data.pop("prices", None) if isinstance(data, dict) else None
    try:
        prices = validate_prices(prices)
    except PriceError as exc:
        raise AliasError(exc.reason, field=exc.field) from exc
    return validate_document(data), prices


@dataclass
class Plan:
    document: object
    prune: bool
    created: list = field(default_factory=list)
    updated: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    deleted: list = field(default_factory=list)
    default_from: str | None = None
    default_to: str | None = None
    prices: dict = field(default_factory=dict)  # target -> PriceSpec, from the file
    prices_created: list = field(default_factory=list)
    prices_updated: list = field(default_factory=list)
    prices_deleted: list = field(default_factory=list)

    @property
    def default_changes(self) -> bool:
        return self.default_to is not None and self.default_to != self.default_from

    @property
    def changes(self) -> bool:
        return bool(self.created or self.updated or self.deleted or self.default_changes or self.prices_created
                    or self.prices_updated or self.prices_deleted)

    def summary(self) -> str:
        text = (f"created {len(self.created)}, updated {len(self.updated)}, "
                f"unchanged {len(self.unchanged)}, deleted {len(self.deleted)}")
        if self.prices or self.prices_deleted:
            text += (f"; prices: created {len(self.prices_created)}, updated {len(self.prices_updated)}, "
                     f"deleted {len(self.prices_deleted)}")
        return text

    def lines(self) -> list[str]:
        for action, names in (("create", self.created), ("update", self.updated), ("delete", self.deleted)):
            for name in names:
                yield f"{action} {name}"
        if self.default_changes:
            yield f"default {self.default_from or '(none)'} -> {self.default_to}"
        for action, targets in (("create", self.prices_created), ("update", self.prices_updated),
                                ("delete", self.prices_deleted)):
            for target in targets:
                yield f"{action} price {target}"


def current() -> tuple[dict[str, AliasSpec], str | None]:
    """The database's aliases as {name: AliasSpec} and the default name."""
    aliases, default = {}, None
    for alias in Alias.objects.prefetch_related("entries"):
        aliases[alias.name] = alias.spec()
        if alias.is_default:
            default = alias.name
    return aliases, default


def plan(document: AliasDocument, *, prune: bool = False, prices: dict[str, PriceSpec] | None = None) -> Plan:
    existing, default = current()
    result = Plan(document, prune, default_from=default, default_to=document.default, prices=prices or {})
    existing_prices = current_prices()
    for target, price in sorted(result.prices.items()):
        if target not in existing_prices:
            result.prices_created.append(target)
        elif existing_prices[target] != price:
            result.prices_updated.append(target)
    if prune:
        result.prices_deleted = sorted(set(existing_prices) - set(result.prices))
    for name, spec in sorted(document.aliases.items()):
        if name not in existing:
            result.created.append(name)
        elif existing[name] != spec:
            result.updated.append(name)
        else:
            result.unchanged.append(name)
    if prune:
        result.deleted = sorted(set(existing) - set(document.aliases))
        if default in result.deleted and document.default is None:
            raise AliasError(f"--prune would delete the default alias {default!r}: name a default "
                             "defined in this file", field="default")
    return result


def apply(result: Plan) -> Plan:
    """Write a plan in one transaction, through the model layer's alias write.

    The default mark moves before the prune so that deleting the old default is allowed.
    """
    with transaction.atomic():
        for name in result.created + result.updated:
            Alias.objects.put(result.document.aliases[name])
        if result.default_changes:
            Alias.objects.get(name=result.default_to).make_default()
        if result.deleted:
            pruned = Alias.objects.filter(name__in=result.deleted)
            pruned.check_deletable()
            pruned.delete()
        for target in result.prices_created + result.prices_updated:
            price = result.prices[target]
            Price.objects.update_or_create(target=target, defaults={"prompt": price.prompt,
                                                                    "completion": price.completion})
        if result.prices_deleted:
            Price.objects.filter(target__in=result.prices_deleted).delete()
    return result


def sync(path: str, *, prune: bool = False, dry_run: bool = False) -> Plan:
    """Read, diff and (unless dry_run) write; returns the Plan. Raises AliasError."""
    document, prices = read(path)
    result = plan(document, prune=prune, prices=prices)
    if not dry_run:
        apply(result)
    return result


def export_data() -> dict:
    aliases, default = current()
    data = {"aliases": {name: spec.to_data() for name, spec in sorted(aliases.items())}}
    if default:
        data["default"] = default
    prices = current_prices()
    if prices:
        data["prices"] = {target: price.to_data() for target, price in sorted(prices.items())}
    return data


def dump(stream: TextIO) -> None:
    yaml.safe_dump(export_data(), stream, sort_keys=False, allow_unicode=True, default_flow_style=False)
