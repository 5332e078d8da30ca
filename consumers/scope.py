"""A consumer's scope (README#consumers): which models its keys may ask for.

``allowed_models`` patterns are exact model names or prefixes ending in ``*``; none means
every model. Checked by routing.views.begin against the requested name (normalised as
usage sees it: ``mana/<class>`` or ``provider/model``) before anything is routed; the
built-in consumers have no scope. Memory only: a dict lookup and a loop over the patterns.
"""
from manallm.errors import PermissionDenied

from .table import consumers


def allows(patterns: tuple[str, ...], model: str) -> bool:
    """Whether ``model`` matches one of ``patterns`` (an empty scope allows every model)."""
    if not patterns:
        return True
    for pattern in patterns:
        if model == pattern or (pattern.endswith("*") and model.startswith(pattern[:-1])):
            return True
    return False


def check(consumer: str, model: str) -> None:
    """Raise the 403 ``permission_denied`` when ``consumer`` may not ask for ``model``.
    The message names the model, never the consumer's patterns."""
    view = consumers.get(consumer)
    if view is None or not model or allows(view.allowed_models, model):
        return
    shown = model if len(model) <= 200 else model[:200] + "..."
    raise PermissionDenied(f"This API key may not use the model {shown!r}.", type="permission_denied",
                           code="model_not_allowed", param="model")
