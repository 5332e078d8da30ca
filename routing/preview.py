"""The route preview (README#operator-console): which entry of an alias would serve now, and why
the others would be passed over.

Read from this process's memory only, through the walk's own skip decision
(``Router.admit`` without ``claim``): no upstream call, no breaker touched, a half-open
breaker's trial reported but left for the next real request. The API
(``GET /v1/aliases/<name>/route``) and the admin's alias page both show this.
"""
from health.breaker import HALF_OPEN
from manallm.errors import ModelNotFound

from .router import Router, router as default_router
from .table import AliasTable, aliases as default_aliases

READY, SKIPPED = "ready", "skipped"


def route(name: str, *, router: Router = default_router, table: AliasTable | None = None) -> dict:
    """``{"alias", "would_serve", "entries": [{"target", "state", "reason"}]}`` for the
    alias ``name``; ``would_serve`` is the first entry ``ready`` or ``half_open``, None
    when every entry would be skipped. Raises ModelNotFound for an unknown alias."""
    view = (table or default_aliases).snapshot.aliases.get(name)
    if view is None:
        raise ModelNotFound(f"Unknown alias {name!r}.", param="name")
    entries, would_serve = [], None
    for entry in view.chain:
        reason, status = router.admit(router.providers.get(entry.provider), entry, claim=False)
        if reason is not None:
            state = SKIPPED
        else:
            state = HALF_OPEN if status == HALF_OPEN else READY
            would_serve = would_serve or entry.target
        entries.append({"target": entry.target, "state": state, "reason": reason})
    return {"alias": view.name, "would_serve": would_serve, "entries": entries}
