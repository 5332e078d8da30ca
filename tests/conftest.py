import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import httpx
import psycopg
import pytest

from tests.helpers import free_port, redis_up, server_binary, wait_for
from tests.server import gateway_server

pytest_plugins = ["tests.fake_fixtures"]


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test starts with no adapters, no poller and empty caches in this process."""
    from manallm import background
    from providers import registry
    from routing import catalog

    registry.reset()
    background.stop()
    catalog.clear()
    yield
    registry.reset()
    background.stop()


@pytest.fixture
def make_server(tmp_path, fake_upstream):
    """Start real gateway processes: make_server(env={...}, database=None, prepare=True)."""
    servers = []

    def make(env=None, database=None, prepare=True, name="gw"):
        server = gateway_server(tmp_path / name, fake_upstream.url, env, database)
        if prepare:
            server.prepare()
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def gateway(make_server, fake):
    """One gateway process with every provider pointed at the fake upstream."""
    return make_server()


@pytest.fixture
def http(gw, fake):
    """An httpx client for the module's ``gw`` gateway (see tests.server.module_gateway)."""
    with httpx.Client(base_url=gw.url, timeout=20) as client:
        yield client


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server of this test's own, on a free loopback port: ``.url``, and
    ``.process`` for the fault tests (killed, or stopped with SIGSTOP)."""
    binary = server_binary("redis-server")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: redis_up(port), timeout=10), "redis-server did not start"
        yield SimpleNamespace(url=f"redis://127.0.0.1:{port}/0", process=process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a test may have left it stopped
            process.terminate()
        process.wait(10)


@pytest.fixture
def redis_url(redis_server):
    """The URL of this test's own redis-server."""
    return redis_server.url


class PostgresServer:
    """A PostgreSQL server of the test session's own: ``initdb`` into a temporary
    directory, ``postgres`` on a free loopback port with its unix socket in that
    directory, trust authentication, durability off (a test database). ``stop()`` and
    ``start()`` let an outage test take it away and bring it back on the same port.

    PostgreSQL refuses to run as root: as root, its programs run as the ``postgres``
    user the Debian package creates (the directory is handed to that user).
    """

    def __init__(self):
        self.initdb, self.postgres = server_binary("initdb"), server_binary("postgres")
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root, and there is no 'postgres' user to run PostgreSQL as")
        self.root = Path(tempfile.mkdtemp(prefix="manallm-pg-"))
        if self.user:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
        self.process = None
        self.log = None
        self._names = itertools.count(1)
        subprocess.run([self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                        "-E", "UTF8"], check=True, capture_output=True, timeout=120, **self._as_owner())

    def _as_owner(self):
        return {"user": self.user.pw_uid, "group": self.user.pw_gid} if self.user else {}

    def start(self):
        self.log = open(self.root / "postgres.log", "ab")
        self.process = subprocess.Popen(
            [self.postgres, "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1", "-k", str(self.root),
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=self.log, **self._as_owner())
        assert wait_for(self.accepting, timeout=30), f"postgres did not start:\n{self.logs()}"
        return self

    def stop(self):
        """A fast shutdown (SIGINT): every client connection is cut, as in a restart."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(30)
        self.process = None
        if self.log:
            self.log.close()

    def accepting(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"postgres exited:\n{self.logs()}")
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def url(self, database):
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self):
        """A fresh, empty database; its URL."""
        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def logs(self):
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """The session's PostgreSQL server (started once; a test that stops it starts it again)."""
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres):
    """A fresh database on the session's PostgreSQL server, for this test alone."""
    if postgres.process is None:
        postgres.start()  # an earlier test stopped it and failed before starting it again
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def shared_database(request, tmp_path):
    """One database several gateway processes share: a SQLite file, or a fresh database
    on the session's PostgreSQL server (the cross-process tests run on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def chromium():
    """Headless Chromium (Debian's package) driven by Playwright's sync API, for the admin
    pages in a real browser. Use it from sync tests; one page per test:
    ``page = chromium.new_page()``. Per test, not per session: while Playwright's sync API
    is open, its event loop counts as running in this thread, and every asyncio test
    after it would fail to start its own."""
    path = server_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()
