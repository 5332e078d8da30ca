"""Run the real gateway: a daphne process on a free port with its own SQLite file."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


def provider_env(fake_url):
    """Point every provider at the fake upstream (each cloud under its own path prefix)."""
    env = {"OLLAMA_URL": fake_url, "GOOGLE_API_KEY": "test-google-key", "GOOGLE_BASE_URL": f"{fake_url}/google"}
    for name in ("openrouter", "groq", "together", "openai"):
        env[f"{name.upper()}_API_KEY"] = f"test-{name}-key"
        env[f"{name.upper()}_BASE_URL"] = f"{fake_url}/{name}/v1"
    return env


def gateway_server(workdir, fake_url, env=None, database=None):
    """A gateway process (not started) whose providers all point at the fake upstream."""
    return Server(workdir, {**provider_env(fake_url), **(env or {})}, database)


def module_gateway(name, **env):
    """A module-scoped ``gw`` fixture: one prepared gateway started with ``env`` serves
    every test of the module (write ``gw = module_gateway("name", KEY="value")``)."""

    @pytest.fixture(scope="module")
    def gw(fake_upstream, tmp_path_factory):
        server = gateway_server(tmp_path_factory.mktemp(name), fake_upstream.url, env).prepare().start()
        yield server
        server.stop()

    return gw


class Server:
    bind = "127.0.0.1"  # the address daphne listens on (a subclass may listen on every interface)
    # Whatever a test sends, the server's log must hold no traceback: an input that
    # reaches one is a bug even when the client saw a clean answer (stop() checks it).
    allow_tracebacks = False

    def __init__(self, workdir, env=None, database=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = database or f"sqlite:///{self.workdir / 'db.sqlite3'}"
        self.env = {**os.environ, "DATABASE_URL": self.database, "PYTHONUNBUFFERED": "1",
                    "ALIASES_FILE": str(ROOT / "aliases.yaml"), "STATE_POLL_INTERVAL": "0.1", **(env or {})}
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        self.process = None
        self.log_path = self.workdir / f"server-{self.port}.log"

    def manage(self, *args, check=True):
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=check,
                              capture_output=True, text=True, timeout=120)

    def prepare(self):
        self.manage("migrate", "--noinput")
        self.manage("import_aliases_if_empty")
        return self

    def start(self):
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "--verbosity", "0", "-b", self.bind, "-p", str(self.port),
             "manallm.asgi:application"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_for(self._ready, timeout=30, interval=0.05):
            raise RuntimeError(f"gateway did not start:\n{self.logs()}")
        return self

    def launch(self):
        """Start it as `make run` does (manallm.serve: WEB_CONCURRENCY workers, a SIGTERM
        that drains and flushes), rather than a bare daphne."""
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "manallm.serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_for(self._ready, timeout=30, interval=0.05):
            raise RuntimeError(f"gateway did not start:\n{self.logs()}")
        return self

    def _ready(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{self.logs()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def logs(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum=signal.SIGHUP):
        self.process.send_signal(signum)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()
            if not self.allow_tracebacks and "Traceback (most recent call last)" in self.logs():
                raise AssertionError(f"the gateway's log holds a traceback:\n{self.logs()[-4000:]}")

