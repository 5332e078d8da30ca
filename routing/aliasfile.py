"""Sync between an aliases YAML file and the database (README#commands, README#aliases-file).

``read`` parses and validates, ``plan`` diffs against the database, ``apply`` writes a
plan in one transaction; ``dump`` is the export. Import, --dry-run, SIGHUP and
first start all go through these.
"""
import logging
from dataclasses import dataclass, field
from typing import TextIO

import yaml
from django.db import transaction

from .models import Alias
from .validators import AliasDocument, AliasError, AliasSpec, validate_document

logger = logging.getLogger("manallm.routing")


def read(path: str) -> AliasDocument:
    """Parse and validate a file; raises AliasError naming what is wrong."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise AliasError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise AliasError(f"{path} is not valid YAML: {exc}") from exc
    return validate_document(data)


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

    @property
    def default_changes(self) -> bool:
        return self.default_to is not None and self.default_to != self.default_from

    @property
    def changes(self) -> bool:
        return bool(self.created or self.updated or self.deleted or self.default_changes)

    def summary(self) -> str:
        return (f"created {len(self.created)}, updated {len(self.updated)}, "
                f"unchanged {len(self.unchanged)}, deleted {len(self.deleted)}")

    def lines(self) -> list[str]:
        for action, names in (("create", self.created), ("update", self.updated), ("delete", self.deleted)):
            for name in names:
                yield f"{action} {name}"
        if self.default_changes:
            yield f"default {self.default_from or '(none)'} -> {self.default_to}"


def current() -> tuple[dict[str, AliasSpec], str | None]:
    """The database's aliases as {name: AliasSpec} and the default name."""
    aliases, default = {}, None
    for alias in Alias.objects.prefetch_related("entries"):
        aliases[alias.name] = alias.spec()
        if alias.is_default:
            default = alias.name
    return aliases, default


def plan(document: AliasDocument, *, prune: bool = False) -> Plan:
    existing, default = current()
    result = Plan(document, prune, default_from=default, default_to=document.default)
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
    return result


def sync(path: str, *, prune: bool = False, dry_run: bool = False) -> Plan:
    """Read, diff and (unless dry_run) write; returns the Plan. Raises AliasError."""
    result = plan(read(path), prune=prune)
    if not dry_run:
        apply(result)
    return result


def export_data() -> dict:
    aliases, default = current()
    data = {"aliases": {name: spec.to_data() for name, spec in sorted(aliases.items())}}
    if default:
        data["default"] = default
    return data


def dump(stream: TextIO) -> None:
    yaml.safe_dump(export_data(), stream, sort_keys=False, allow_unicode=True, default_flow_style=False)
