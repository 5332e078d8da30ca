"""`make run`'s server (README#running-several-replicas): daphne, one process or
WEB_CONCURRENCY of them on one listening socket, and a graceful stop.

    python -m manallm.serve [--host 0.0.0.0] [--port PORT] [--workers WEB_CONCURRENCY]

- **One worker** (the default): this process is the server, as plain daphne was.
- **N workers**: this process is the launcher. It binds the socket once and starts N
  servers on it (daphne's ``fd:`` endpoint, as ``daphne --fd``); the kernel spreads the
  connections. SIGHUP re-imports ALIASES_FILE here, once, and every worker picks the
  change up through the revision poll (workers ignore SIGHUP, so a hang-up sent to the
  whole process group does not import N times). SIGTERM or SIGINT is passed on to every
  worker, and the launcher exits 0 when they all stopped cleanly. A worker that dies
  after it started serving is restarted; one that dies before (a broken configuration)
  stops the others and the launcher exits 1, so a crash loop is not hidden.
- **Graceful stop** (``GracefulServer``): SIGTERM/SIGINT closes the listening socket, lets
  in-flight requests and streams finish for up to SHUTDOWN_GRACE seconds, ends the streams
  still open with an error event and ``[DONE]`` (manallm.drain), flushes what the process
  holds in memory (``background.shutdown``), closes the connections and exits 0. A
  non-streaming request still running at the deadline is cancelled.
"""
# daphne.server installs Twisted's asyncio reactor: it goes before anything imports Twisted.
from daphne.server import Server  # isort:skip

import argparse
import asyncio
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import weakref

from daphne.endpoints import build_endpoint_description_strings
from twisted.internet import reactor

from . import background, drain

logger = logging.getLogger("manallm.serve")

# After the grace: how long the ended streams get to write their last events, and the flush.
ENDING_SECONDS = 2.0
FLUSH_SECONDS = 10.0
# How long closed connections get to send what is still buffered.
CLOSE_SECONDS = 1.0


class GracefulServer(Server):
    """daphne's ``Server`` whose SIGTERM/SIGINT drains instead of cancelling at once.

    daphne's own handling stops the reactor, and its ``kill_all_applications`` cancels
    every request in flight; here the reactor is stopped only once the drain is done.
    """

    def __init__(self, application, endpoints: list[str], grace: float, ready_fd: int | None = None):
        super().__init__(application=application, endpoints=endpoints, signal_handlers=False, verbosity=0,
                         ready_callable=lambda: _tell_ready(ready_fd))
        self.grace = grace
        self.ports = []
        self.channels = weakref.WeakSet()  # the HTTP connections that carried a request
        self.draining = False

    def run(self) -> None:
        reactor.callWhenRunning(self._handle_signals)
        super().run()

    def _handle_signals(self) -> None:
        loop = asyncio.get_event_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.drain)

    def listen_success(self, port) -> None:
        self.ports.append(port)
        super().listen_success(port)

    def protocol_connected(self, protocol) -> None:
        super().protocol_connected(protocol)
        self.channels.add(protocol.channel)

    def in_flight(self) -> set[asyncio.Future]:
        """The application instances (one per request) still running."""
        return {details["application_instance"] for details in list(self.connections.values())
                if "application_instance" in details and not details["application_instance"].done()}

    def drain(self) -> None:
        """Stop accepting, then finish in the background (idempotent: Ctrl-C reaches the
        launcher and its workers alike)."""
        if self.draining:
            return
        self.draining = True
        for port in self.ports:
            port.stopListening()
        logger.info("stopping: no new connections; %d requests in flight get up to %g s",
                    len(self.in_flight()), self.grace)
        asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._wait(loop.time() + self.grace)
            if self.in_flight():
                ended = drain.end_streams()
                logger.warning("stopping: grace of %g s over; ending %d open streams", self.grace, ended)
                await self._wait(loop.time() + ENDING_SECONDS)
            try:
                async with asyncio.timeout(FLUSH_SECONDS):
                    await background.shutdown()
            except Exception:
                logger.exception("stopping: flushing what this process holds failed")
            await self._close_connections(loop.time() + CLOSE_SECONDS)
        finally:
            reactor.stop()

    async def _wait(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while (pending := self.in_flight()) and deadline > loop.time():
            await asyncio.wait(pending, timeout=deadline - loop.time())

    async def _close_connections(self, deadline: float) -> None:
        """Close idle keep-alive connections, letting each send what is still buffered
        (the reactor's shutdown would drop it)."""
        for channel in list(self.channels):
            if channel.connected:
                channel.transport.loseConnection()
        while any(channel.connected for channel in list(self.channels)) and deadline > time.monotonic():
            await asyncio.sleep(0.01)


def _tell_ready(ready_fd: int | None) -> None:
    if ready_fd is not None:
        os.write(ready_fd, f"{os.getpid()}\n".encode())
        os.close(ready_fd)


def serve(endpoint: str, ready_fd: int | None = None) -> int:
    """Run one graceful daphne server on ``endpoint``; its exit status."""
    from django.conf import settings

    from manallm.asgi import application

    if ready_fd is not None:
        # A launcher's worker: the launcher re-imports the aliases file, once for all.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server = GracefulServer(application, [endpoint], settings.SHUTDOWN_GRACE, ready_fd)
    server.run()
    return 1 if server.abort_start else 0


class Launcher:
    """N workers on one socket; see the module docstring for signals and deaths."""

    def __init__(self, host: str, port: int, workers: int, grace: float):
        self.count = workers
        self.grace = grace
        self.sock = socket.create_server((host, port), backlog=1024)
        self.sock.set_inheritable(True)
        self.ready_r, self.ready_w = os.pipe()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.workers: dict[int, subprocess.Popen] = {}
        self.ready: set[int] = set()
        self.stopping = False
        self.deadline: float | None = None  # while stopping: when the stragglers are killed
        self.status = 0

    def run(self) -> int:
        import django

        django.setup()
        from routing.reload import install_sighup

        install_sighup()  # a thread per SIGHUP; set_wakeup_fd below only wakes the loop
        signal.set_wakeup_fd(self.wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop_requested)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for _ in range(self.count):
            self._spawn()
        logger.info("serving with %d workers on %s:%d", self.count, *self.sock.getsockname()[:2])
        while self.workers:
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            readable, _, _ = select.select([self.wake_r, self.ready_r], [], [], timeout)
            if self.wake_r in readable:
                os.read(self.wake_r, 512)
            if self.ready_r in readable:
                self.ready.update(int(pid) for pid in os.read(self.ready_r, 4096).split())
            self._reap()
            if self.deadline is not None and time.monotonic() >= self.deadline:
                for process in self.workers.values():
                    logger.error("worker %d did not stop within the grace; killing it", process.pid)
                    process.kill()
                self.status = 1
                self.deadline = None
        return self.status

    def _spawn(self) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "manallm.serve", "--fd", str(self.sock.fileno()), "--ready-fd", str(self.ready_w)],
            pass_fds=(self.sock.fileno(), self.ready_w))
        self.workers[process.pid] = process

    def _stop_requested(self, signum, frame) -> None:
        if not self.stopping:
            self.stop(f"signal {signal.Signals(signum).name}")

    def stop(self, why: str) -> None:
        logger.info("stopping %d workers (%s)", len(self.workers), why)
        self.stopping = True
        self.sock.close()  # the workers close their copies: new connections are refused
        self.deadline = time.monotonic() + self.grace + ENDING_SECONDS + FLUSH_SECONDS + CLOSE_SECONDS
        for process in self.workers.values():
            process.send_signal(signal.SIGTERM)

    def _reap(self) -> None:
        for pid, process in list(self.workers.items()):
            code = process.poll()
            if code is None:
                continue
            del self.workers[pid]
            _mark_dead(pid)
            if self.stopping:
                if code != 0:
                    logger.error("worker %d exited with status %d", pid, code)
                    self.status = 1
            elif pid in self.ready:
                logger.error("worker %d exited (status %d); starting another", pid, code)
                self._spawn()
            else:
                logger.error("worker %d exited (status %d) before it served; stopping", pid, code)
                self.status = 1
                self.stop("a worker could not start")
            self.ready.discard(pid)


def _mark_dead(pid: int) -> None:
    """Drop a dead worker's live gauges from the aggregated /metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "manallm.settings")
    from django.conf import settings

    parser = argparse.ArgumentParser(prog="python -m manallm.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 3025)))
    parser.add_argument("--workers", type=int, default=settings.WEB_CONCURRENCY)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a launcher's worker
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fd is not None:
        return serve(f"fd:fileno={args.fd}", args.ready_fd)
    if args.workers <= 1:
        return serve(build_endpoint_description_strings(host=args.host, port=args.port)[0])
    return Launcher(args.host, args.port, args.workers, settings.SHUTDOWN_GRACE).run()


if __name__ == "__main__":
    sys.exit(main())
