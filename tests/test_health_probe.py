"""probe_providers (README#commands) as a real subprocess against a live fake upstream and a dead
port, on a temporary SQLite file; plus the probe loop in-process."""
import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.helpers import unused_port, wait_for
from tests.server import ROOT

MANAGE = [sys.executable, str(ROOT / "manage.py")]


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "db.sqlite3"
    env = base_env(path)
    done = subprocess.run([*MANAGE, "migrate", "--skip-checks", "-v", "0"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def db(database):
    with sqlite3.connect(database) as conn:
        conn.execute("DELETE FROM health_breaker")
    return database


def base_env(path, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.endswith(("_API_KEY", "_BASE_URL", "_URL", "_MAX_CONCURRENT", "_TIMEOUT"))}
    env.update(DATABASE_URL=f"sqlite:///{path}", DJANGO_SETTINGS_MODULE="manallm.settings", PYTHONUNBUFFERED="1",
               LOG_LEVEL="info", BREAKER_FAILURE_THRESHOLD="2", BREAKER_BACKOFF_SECONDS="60")
    env.update(extra)
    return env


def row(path, key="ollama"):
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM health_breaker WHERE key = ?", (key,)).fetchone()
    return dict(found) if found else None


def probe_once(path, url, *args):
    return subprocess.run([*MANAGE, "probe_providers", "--once", "--timeout", "2", *args],
                          env=base_env(path, OLLAMA_URL=url), cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_once_against_live_and_dead_upstreams(db, fake):
    started = time.time()
    done = probe_once(db, fake.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ollama: ok")
    ok = row(db)
    assert ok["consecutive_failures"] == 0 and ok["unhealthy_until"] is None
    assert ok["last_check"] >= started - 1  # a success is recorded (last_check) too

    down = f"http://127.0.0.1:{unused_port()}"  # nothing listens there: connection refused
    done = probe_once(db, down)
    assert done.returncode == 0, done.stderr  # a failing probe is not a failing command
    assert done.stdout.startswith("ollama: failed") and "connect_error" in done.stdout
    first = row(db)
    assert first["consecutive_failures"] == 1 and first["unhealthy_until"] is None
    assert "probe failed: connect_error" in first["last_error"]

    done = probe_once(db, down)  # counts continue from the database: the threshold trips
    assert done.returncode == 0, done.stderr
    tripped = row(db)
    assert tripped["consecutive_failures"] == 2
    assert tripped["unhealthy_until"] == pytest.approx(tripped["last_check"] + 60)
    assert "breaker ollama: healthy -> unhealthy" in done.stderr  # one log line per transition

    done = probe_once(db, fake.url)  # back: the provider breaker closes
    assert done.returncode == 0, done.stderr
    closed = row(db)
    assert closed["consecutive_failures"] == 0 and closed["unhealthy_until"] is None
    assert "breaker ollama: unhealthy -> healthy" in done.stderr


def test_probe_success_leaves_deployment_breakers_alone(db, fake):
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO health_breaker (key, provider, model, consecutive_failures, last_error, last_check,"
            " unhealthy_until, updated_at) VALUES ('ollama/qwen2.5:7b', 'ollama', 'qwen2.5:7b', 2, 'http_503',"
            " ?, ?, ?)", (time.time(), time.time() + 600, time.time()))
    done = probe_once(db, fake.url)
    assert done.returncode == 0, done.stderr
    assert row(db, "ollama/qwen2.5:7b")["unhealthy_until"] is not None
    assert row(db)["consecutive_failures"] == 0


def test_loop_survives_a_hanging_probe_and_stops_on_sigterm(db, fake):
    fake.fault("ollama", "*", hang=True)
    proc = subprocess.Popen([*MANAGE, "probe_providers", "--interval", "0.2", "--timeout", "0.5"],
                            env=base_env(db, OLLAMA_URL=fake.url), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # two hanging probes in a row: each times out, the loop goes on and the breaker trips
        assert wait_for(lambda: (row(db) or {}).get("unhealthy_until") is not None, 15), "breaker never tripped"
        assert "timeout" in row(db)["last_error"]
        fake.clear()  # the upstream answers again: the loop is still alive and closes the breaker
        assert wait_for(lambda: (row(db) or {}).get("consecutive_failures") == 0, 10), "loop stopped probing"
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "probe loop stopped" in err


def test_sigterm_during_a_hanging_tick(db, fake):
    fake.fault("ollama", "*", hang=True)
    proc = subprocess.Popen([*MANAGE, "probe_providers", "--timeout", "30"],
                            env=base_env(db, OLLAMA_URL=fake.url), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stats_key = "ollama/*"
        assert wait_for(lambda: fake.stats().get("requests", {}).get(stats_key, 0) >= 1, 15), fake.stats()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err


# --- in-process: the tick logic ------------------------------------------------------


class StubProvider:
    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.in_flight = 0
        self.closed = False

    async def probe(self):
        if self.behaviour == "hang":
            await asyncio.sleep(3600)
        if isinstance(self.behaviour, BaseException):
            raise self.behaviour

    async def aclose(self):
        self.closed = True


@pytest.mark.django_db(transaction=True)
async def test_tick_isolates_each_provider(monkeypatch):
    from health import probe
    from health.board import breakers
    from providers import registry
    from providers.errors import ConnectError

    stubs = {"ollama": StubProvider(None), "groq": StubProvider("hang"),
             "openai": StubProvider(ConnectError("refused")), "together": StubProvider(ValueError("bug"))}
    monkeypatch.setattr(registry, "configured", lambda: stubs)
    breakers.clear()
    try:
        results = {r.provider: r for r in await probe.tick(0.2)}
        assert results["ollama"].ok
        assert not results["groq"].ok and "timeout" in results["groq"].error
        assert results["openai"].error == "connect_error: refused"
        assert results["together"].error == "ValueError: bug"
        assert breakers.get("groq").consecutive_failures == 1
        assert breakers.get("ollama").last_check is not None
        assert breakers.get("openai").last_error == "probe failed: connect_error: refused"
    finally:
        breakers.clear()
