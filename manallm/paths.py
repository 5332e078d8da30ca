"""What each URL prefix needs from the layers below Django's URL resolver: one table.

``manallm/urls.py`` (and the apps' ``urls.py``) say which view serves a path; the
handler and the middleware run before that resolution, so they decide from the path's
prefix. This is the one place those decisions are written (a test checks every route
has a row):

- *DB-free*: the view reads in-memory state only, so the handler skips Django's
  per-request connection housekeeping and its thread hops (``manallm.handler``).
  ``/v1/health/<provider>/reset`` writes through the ORM: its row comes before the
  DB-free ``/v1/health`` one.
- *browser*: a browser session can matter (the admin, or a staff session on the
  management API), so the session/auth/CSRF stack runs (``manallm.middleware``).
"""
import functools

# prefix, DB-free, browser session stack: the first row whose prefix matches decides.
PATHS: tuple[tuple[str, bool, bool], ...] = (
    ("/v1/chat/", True, False),
    ("/v1/embeddings", True, False),
    ("/v1/models", True, False),
    ("/v1/health/", False, True),  # /v1/health/<provider>/reset: a management write, staff sessions too
    ("/v1/health", True, False),
    ("/health", True, False),
    ("/ready", True, False),
    ("/metrics", True, False),
    ("/v1/aliases", False, True),
    ("/v1/consumers", False, True),  # the consumer management API: staff sessions too
    ("/v1/usage", False, True),  # a report from the database; staff sessions too
    ("/admin", False, True),
    ("/static/", False, True),
)
_UNLISTED = (False, False)  # Django's full per-request housekeeping, no session stack


@functools.lru_cache(maxsize=1024)
def _row(path: str) -> tuple[bool, bool]:
    # Cached: a server sees few distinct paths, and this runs on every request.
    for prefix, db_free, browser in PATHS:
        if path.startswith(prefix):
            return db_free, browser
    return _UNLISTED


def is_db_free(path: str) -> bool:
    """True when the request at ``path`` never touches the database."""
    return _row(path)[0]


def needs_browser_stack(path: str) -> bool:
    """True when a browser session (cookie, CSRF) can matter at ``path``."""
    return _row(path)[1]
