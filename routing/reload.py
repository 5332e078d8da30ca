"""SIGHUP re-imports ALIASES_FILE into the database and this process's alias table.

Beside the YAML sync it drives (``aliasfile.sync``). One server process installs the
handler from the ASGI entry point; with WEB_CONCURRENCY workers the launcher
(``manallm.serve``) installs it instead and imports the file once for all of them.
Every other process follows through the revision, as for any alias change.
"""
import logging
import signal
import threading

from django.conf import settings
from django.db import connection

from . import aliasfile
from .models import recorded
from .validators import AliasError

logger = logging.getLogger("manallm.routing")


def reload_aliases_file() -> None:
    """Re-import ALIASES_FILE; a bad file changes nothing and is logged."""
    path = settings.ALIASES_FILE
    try:
        with recorded("sighup"):  # the alias history's actor (README#alias-history)
            result = aliasfile.sync(path)
    except AliasError as exc:
        logger.error("SIGHUP: not reloading %s: %s; aliases unchanged", path, exc)
        return
    except Exception:
        logger.exception("SIGHUP: reloading %s failed; aliases unchanged", path)
        return
    finally:
        connection.close()
    # This process's table is already reloaded: every committed write refreshes it
    # (routing.signals), so reading it again here would only repeat the load.
    logger.info("SIGHUP: reloaded %s: %s", path, result.summary())


def install_sighup() -> None:
    """Re-import the aliases file on SIGHUP, in a thread: a signal handler must not do I/O."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        threading.Thread(target=reload_aliases_file, name="manallm-sighup", daemon=True).start()

    signal.signal(signal.SIGHUP, handler)
