"""The request log's path from a finished request to a row (README#request-log).

``record`` is an ``Exchange`` listener (manallm.exchange): it runs on the request path,
so it only decides whether the request is worth a row (REQUEST_LOG) and appends a tuple
to a bounded in-memory buffer — no database, no model instance, never an exception out.
``flush`` runs on the background DB thread (manallm.background): it is registered as a
state source whose ``poll`` writes what the buffer holds in batches with ``bulk_create``
every STATE_POLL_INTERVAL, and as a shutdown hook, so a graceful stop writes the rest.

Faults: while the database is down the batch being written is kept and written again by
the next poll (nothing is lost while the buffer has room). The buffer holds at most
``capacity`` rows; when it is full the oldest row is dropped to make room for the newest
and counted (``dropped``), with one warning per outage, so a long outage costs the
oldest rows, never memory or a request. A batch the database refuses for a reason other
than the connection (a bug, not an outage) is dropped and logged, so it cannot block
the log forever.
"""
import datetime
import logging
import threading
import time
from collections import deque

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from manallm.background import run_db
from manallm.exchange import Exchange

from .models import RequestLogEntry

logger = logging.getLogger("manallm.requestlog")

# The columns of a buffered row, in the order ``_row`` builds them (RequestLogEntry's fields).
COLUMNS = ("time", "request_id", "consumer", "kind", "streaming", "requested", "target", "attempts", "status",
           "error_type", "latency_ms", "first_token_ms", "prompt_tokens", "completion_tokens", "cache", "limited")


def worth_a_row(exchange: Exchange, mode: str) -> bool:
    """REQUEST_LOG: ``all`` every request; ``errors`` one that failed (a status of 400 or
    more, or a stream that ended with an error), fell over, or was refused by a limit."""
    if mode == "all":
        return True
    if mode != "errors":
        return False
    return exchange.status >= 400 or bool(exchange.error_type or exchange.attempts or exchange.limited)


def _row(exchange: Exchange) -> tuple:
    first_token = exchange.first_token_seconds
    return (time.time(), exchange.request_id[:128], exchange.consumer[:64], exchange.kind, exchange.streaming,
            exchange.requested[:300], (exchange.target or "")[:300],
            [{"model": a.get("model", ""), "reason": a.get("reason", "")} for a in exchange.attempts],
            exchange.status, (exchange.error_type or "")[:64], round(exchange.latency * 1000),
            None if first_token is None else round(first_token * 1000),
            exchange.prompt_tokens, exchange.completion_tokens, exchange.cache or "", exchange.limited or "")


class RequestLog:
    """The bounded buffer of rows to write, and the batch writer."""

    def __init__(self, capacity: int = 10_000, batch: int = 500):
        self.capacity = capacity
        self.batch = batch
        self.dropped = 0  # rows dropped because the buffer was full (since the process started)
        self._buffer: deque[tuple] = deque()
        self._lock = threading.Lock()  # the request path appends, the DB thread takes
        self._pending: list[tuple] = []  # the batch being written (kept across an outage); DB thread only
        self._warned_full = False
        self._failing = False

    def __str__(self) -> str:
        return "request log"

    # --- the request path ---------------------------------------------------------------

    def record(self, exchange: Exchange) -> None:
        """The ``on_finish`` listener: a row in memory, if the request is worth one."""
        if not worth_a_row(exchange, settings.REQUEST_LOG):
            return
        row = _row(exchange)
        with self._lock:
            if len(self._buffer) >= self.capacity:
                self._buffer.popleft()
                self.dropped += 1
                if not self._warned_full:
                    self._warned_full = True
                    logger.warning("request log: buffer full (%d rows, the database is not keeping up or is "
                                   "down); dropping the oldest rows until it drains", self.capacity)
            self._buffer.append(row)

    def held(self) -> int:
        """Rows in memory not written yet."""
        with self._lock:
            return len(self._buffer) + len(self._pending)

    # --- the DB thread ----------------------------------------------------------------

    def load(self) -> None:
        """Nothing to read: the log is write-only (a state source's load)."""

    def poll(self) -> None:
        """Each background tick: write what is held (see ``flush``)."""
        self.flush()

    def flush(self) -> int:
        """Write every held row in batches; -> rows written. Sync, on the DB thread.

        A connection error keeps the batch for the next call and returns; it is logged
        once per outage, and never raised (the poller would log it every tick).
        """
        written = 0
        while True:
            if not self._pending:
                with self._lock:
                    count = min(len(self._buffer), self.batch)
                    self._pending = [self._buffer.popleft() for _ in range(count)]
                    if not self._buffer:
                        self._warned_full = False
            if not self._pending:
                return written
            rows = [RequestLogEntry(**dict(zip(COLUMNS, row))) for row in self._pending]
            for entry in rows:
                entry.time = datetime.datetime.fromtimestamp(entry.time, tz=datetime.timezone.utc)
            try:
                RequestLogEntry.objects.bulk_create(rows)
            except (OperationalError, InterfaceError) as exc:
                if not self._failing:
                    self._failing = True
                    logger.warning("request log: the database is unavailable (%s); holding %d rows in memory "
                                   "and writing them when it answers", exc, self.held())
                connection.close()  # a dead connection must not stick to the DB thread
                return written
            except Exception:
                logger.exception("request log: the database refused a batch of %d rows; dropped",
                                 len(self._pending))
            else:
                written += len(rows)
                if self._failing:
                    self._failing = False
                    logger.info("request log: the database answers again; writing the held rows")
            self._pending = []

    async def shutdown(self) -> None:
        """A graceful stop: write what is held (manallm.background.on_shutdown)."""
        await run_db(self.flush)


request_log = RequestLog()
