"""Which model names each kind of adapter can send upstream (README#model-names).

Pure functions, no adapter imported: the request validator (``routing.schema``) and
the alias validator (``routing.validators``) call them before a name reaches an SDK or
a URL, and the adapters themselves as a last guard for data stored before the rule.

- Google puts the name into a URL path (``/v1beta/models/<name>:generateContent``) and
  its SDK refuses ``..``, ``?`` and ``&`` with a bare ``ValueError``: only path-safe
  segments of letters, digits, ``.``, ``_`` and ``-`` pass (``models/...`` and
  ``tunedModels/...`` included).
- Ollama and the OpenAI-compatible dialects send the name inside a JSON body; any
  printable name (``manallm.text.unprintable``) is theirs to judge.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from django.conf import settings

_PATH_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _google(model: str) -> str | None:
    if ".." in model:
        return "must not contain '..'"
    for segment in model.split("/"):
        if not _PATH_SEGMENT.fullmatch(segment):
            return ("must be path-safe for Google: segments of letters, digits, '.', '_' or '-' "
                    "(no '?', '&', '#', '%', whitespace or empty segments)")
    return None


RULES: dict[str, Callable[[str], str | None]] = {"google": _google}


def kind_of(provider: str) -> str | None:
    """The adapter kind (``ollama``, ``openai``, ``google``) of a provider name, or None."""
    for name, kind, *_ in settings.PROVIDER_CATALOGUE:
        if name == provider:
            return kind
    return None


def kind_problem(kind: str | None, model: str) -> str | None:
    """Why an adapter of ``kind`` cannot send ``model`` (a reason to quote), or None."""
    rule = RULES.get(kind)
    return rule(model) if rule is not None else None


def model_problem(provider: str, model: str) -> str | None:
    """Why ``model`` cannot be sent to ``provider`` (a reason to quote), or None when it can."""
    return kind_problem(kind_of(provider), model)
