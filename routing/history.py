"""Alias history for the operator (README#alias-history): a readable diff of each recorded
change, and putting a recorded version back.

The recording itself is the model layer's (``routing.models.recorded``); this module
only reads it and, for a restore, writes through the same ``Alias.objects.put`` every
other path uses, validated by the one validator first (a version may name a provider
this server no longer knows).
"""
import difflib

import yaml

from .models import Alias, AliasChange, recorded
from .validators import validate_alias


def as_yaml(data: dict | None) -> str:
    """An alias's recorded form as the aliases file writes it ('' where it did not exist)."""
    if data is None:
        return ""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def diff(change: AliasChange) -> list[tuple[str, str]]:
    """``[(mark, line)]`` from the YAML before to the YAML after: ``"+"`` added, ``"-"``
    removed, ``" "`` unchanged, every line shown (an alias is a few lines)."""
    before, after = as_yaml(change.before).splitlines(), as_yaml(change.after).splitlines()
    return [(line[0], line[2:]) for line in difflib.ndiff(before, after) if not line.startswith("?")]


def restore(change: AliasChange, actor: str) -> tuple[Alias, bool]:
    """Make the alias what ``change`` left it (for a deletion: what was deleted), recorded
    as ``restored`` by ``actor``; ``(alias, changed)``. The default mark stays where it is.

    Raises AliasError when the version no longer validates.
    """
    data = {key: value for key, value in (change.version or {}).items() if key != "default"}
    spec = validate_alias(change.alias, data)
    with recorded(actor, AliasChange.RESTORED) as recording:
        alias, _ = Alias.objects.put(spec)
    return alias, bool(recording.changes)
