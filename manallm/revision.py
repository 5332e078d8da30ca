"""State an app keeps in memory and reloads when a counter in the database moved.

Aliases (routing) and consumers (consumers) are both held whole in every process and
reloaded when another process committed a change: each app's ``Revision`` row is bumped
in the same transaction as the change, and its table polls that one row
(``RevisionedTable.poll``, run by manallm.background) instead of re-reading everything.
The poll lives here once for both; the counter is ``manallm.models.Counter``.
"""
import dataclasses
import logging
import threading
from typing import Any, Protocol

logger = logging.getLogger("manallm.background")


class RevisionCounter(Protocol):
    """``manallm.models.Counter``'s subclasses: one row, read by ``current()``."""

    @classmethod
    def current(cls) -> int: ...


class RevisionedTable:
    """An in-memory table as an immutable ``snapshot`` (a dataclass with a ``revision``),
    swapped whole. A subclass says which counter it follows (``counter``) and how to read
    its rows into a snapshot (``read``); loading, polling and invalidating are shared."""

    snapshot: Any
    counter: "type[RevisionCounter]"  # a class attribute or a property

    def __init__(self, empty: Any) -> None:
        self.snapshot = empty
        # Loads run on the DB thread (the poller) and the sync view thread (a write's
        # on_commit, a read catching up): one at a time, so an older read never lands last.
        self._loading = threading.Lock()

    def read(self, revision: int) -> Any:  # pragma: no cover - each table reads its own rows
        """The snapshot of every row, stamped ``revision`` (sync; off the event loop)."""
        raise NotImplementedError

    def load(self) -> None:
        """Read everything now (sync; call off the event loop)."""
        with self._loading:
            self.snapshot = self.read(self.counter.current())

    def poll(self) -> None:
        """Reload when another process (or path) moved the revision (cheap otherwise: one row)."""
        if self.counter.current() != self.snapshot.revision:
            self.load()

    def invalidate(self) -> None:
        """Reload now (after this process committed a change); on failure keep serving what
        is held, marked stale so the next poll reloads it."""
        try:
            self.load()
        except Exception:
            logger.exception("could not reload %s after a change; the poller will retry", self)
            self.snapshot = dataclasses.replace(self.snapshot, revision=-1)
