"""What each URL prefix needs from the layers below Django's URL resolver: one table.

``manallm/urls.py`` (and the apps' ``urls.py``) say which view serves a path; the
handler and the middleware run before that resolution, so they decide from the path's
prefix. This is the one place those decisions are written (a test checks every route
has a row):

- *DB-free*: the view reads in-memory state only, so the handler skips Django's
  per-request connection housekeeping and its thread hops (``manallm.handler``).
  ``/v1/health/<provider>/reset`` writes through the ORM and is the one exception.
- *browser*: a browser session can matter (the admin, or a staff session on the
  management API), so the session/auth/CSRF stack runs (``manallm.middleware``).
"""

# prefix, DB-free, browser session stack
PATHS: tuple[tuple[str, bool, bool], ...] = (
    ("/v1/chat/", True, False),
    ("/v1/embeddings", True, False),
    ("/v1/models", True, False),
    ("/v1/health/", True, True),  # the reset accepts a staff session (and is not DB-free)
    ("/v1/health", True, False),
    ("/health", True, False),
    ("/ready", True, False),
    ("/metrics", True, False),
    ("/v1/aliases", False, True),
    ("/admin", False, True),
    ("/static/", False, True),
)
DB_FREE_PREFIXES = tuple(prefix for prefix, db_free, _ in PATHS if db_free)
BROWSER_PREFIXES = tuple(prefix for prefix, _, browser in PATHS if browser)


def is_db_free(path: str) -> bool:
    """True when the request at ``path`` never touches the database."""
    return path.startswith(DB_FREE_PREFIXES) and not path.endswith("/reset")


def needs_browser_stack(path: str) -> bool:
    """True when a browser session (cookie, CSRF) can matter at ``path``."""
    return path.startswith(BROWSER_PREFIXES)
