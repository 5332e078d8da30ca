"""`make run`'s launcher as real processes (README#running-several-replicas): WEB_CONCURRENCY
workers on one socket, SIGHUP and SIGTERM to the launcher, and the graceful stop.

Which worker served a request is read from the kernel, not from the gateway: the server
side of the request's TCP connection is found in /proc/net/tcp and its socket in the
file descriptors of one worker process.
"""
import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import chat, content_of, sse_events, wait_for
from tests.server import ROOT, gateway_server

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")

MODEL = "ollama/qwen2.5:7b"
PROMPT = "tell me a long story please"


def launcher(tmp_path, fake_url, **env):
    """A prepared gateway (migrated, aliases imported) started as `make run` starts it."""
    server = gateway_server(tmp_path, fake_url, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), **env})
    (tmp_path / "metrics").mkdir()
    return server.prepare().launch()


@pytest.fixture
def launch(tmp_path, fake_upstream):
    started = []

    def start(**env):
        server = launcher(tmp_path / f"gw{len(started)}", fake_upstream.url, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def workers_of(pid):
    """The launcher's child processes."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(child) for child in children.read_text().split()} if children.exists() else set()


def serving_pid(server_port, client_port, pids):
    """The process among ``pids`` holding the server side of the connection from ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "01" and int(local.split(":")[1], 16) == server_port \
                and int(remote.split(":")[1], 16) == client_port:  # 01: ESTABLISHED
            inode = fields[9]
    assert inode is not None, f"no server-side socket for client port {client_port}"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError(f"no worker among {pids} holds socket {inode}")


def request(server, method, path, body=None):
    """One request on a new connection: (status, body, the pid of the worker that served it)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.connect()
        client_port = connection.sock.getsockname()[1]
        connection.request(method, path, body=json.dumps(body) if body is not None else None,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        return response.status, data, serving_pid(server.port, client_port, workers_of(server.process.pid))
    finally:
        connection.close()


def chat_on_new_connection(server, model=MODEL):
    status, data, pid = request(server, "POST", "/v1/chat/completions", chat(model, "hello"))
    assert status == 200, data
    return json.loads(data)["model"], pid


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def chats_counted(metrics_text):
    """Chat requests counted in a /metrics answer, over every label."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("mana_llm_llm_requests_total{"))


def test_two_workers_share_the_socket_metrics_sighup_restart_and_stop(launch, fake, tmp_path):
    aliases = tmp_path / "aliases.yaml"
    aliases.write_text(yaml.safe_dump({"aliases": {"mana/w": {"chain": [MODEL]}}, "default": "mana/w"}))
    server = launch(WEB_CONCURRENCY="2", ALIASES_FILE=str(aliases))
    assert wait_for(lambda: len(workers_of(server.process.pid)) == 2, timeout=30), server.logs()
    workers = workers_of(server.process.pid)

    # Both workers serve: new connections land on either (the kernel spreads them).
    served = {}
    for _ in range(200):
        model, pid = chat_on_new_connection(server, "mana/w")
        assert model == MODEL
        served[pid] = served.get(pid, 0) + 1
        if len(served) == 2:
            break
    assert set(served) == workers, served
    sent = sum(served.values())

    # /metrics from either worker counts the requests both served.
    metrics_from = set()
    for _ in range(200):
        status, data, pid = request(server, "GET", "/metrics")
        assert status == 200
        assert chats_counted(data.decode()) == sent, (pid, served)
        metrics_from.add(pid)
        if metrics_from == workers:
            break
    assert metrics_from == workers

    # SIGHUP to the launcher: the file is imported once, and every worker serves the change.
    aliases.write_text(yaml.safe_dump({"aliases": {"mana/w": {"chain": ["groq/llama-3.1-8b-instant"]}},
                                       "default": "mana/w"}))
    sent_at = time.monotonic()
    server.signal(signal.SIGHUP)
    changed = set()

    def every_worker_serves_the_change():
        model, pid = chat_on_new_connection(server, "mana/w")
        if model == "groq/llama-3.1-8b-instant":
            changed.add(pid)
        return changed == workers

    assert wait_for(every_worker_serves_the_change, timeout=1, interval=0), (changed, server.logs())
    print(f"SIGHUP to every worker serving the change: {time.monotonic() - sent_at:.3f} s")
    assert server.logs().count("SIGHUP: reloaded") == 1, server.logs()

    # A worker that dies is replaced, and the replacement serves.
    dead = min(workers)
    os.kill(dead, signal.SIGKILL)
    assert wait_for(lambda: len(workers_of(server.process.pid) - {dead}) == 2, timeout=30), server.logs()
    workers = workers_of(server.process.pid)
    (replacement,) = workers - served.keys()
    assert wait_for(lambda: chat_on_new_connection(server, "mana/w")[1] == replacement, timeout=10, interval=0)

    # SIGTERM to the launcher stops every worker; the launcher exits 0 and the port is closed.
    server.signal(signal.SIGTERM)
    assert server.process.wait(15) == 0, server.logs()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # stopped and reaped
    assert refused(server.port)


class OpenStream:
    """A streaming chat read on a thread: the events arrive while the test signals the server."""

    def __init__(self, server):
        self.first_event = threading.Event()
        self.response = None
        self.error = None
        self.ended_at = None
        self._thread = threading.Thread(target=self._read, args=(server,), daemon=True)
        self._thread.start()

    def _read(self, server):
        try:
            with httpx.Client(timeout=60) as client:
                with client.stream("POST", f"{server.url}/v1/chat/completions",
                                   json=chat(MODEL, PROMPT, stream=True)) as response:
                    chunks = []
                    for chunk in response.iter_raw():
                        chunks.append(chunk)
                        self.first_event.set()
                    self.ended_at = time.monotonic()
                    response._content = b"".join(chunks)
                    self.response = response
        except Exception as exc:  # surfaced by result()
            self.error = exc
            self.first_event.set()

    def result(self, timeout):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        if self.error:
            raise self.error
        return sse_events(self.response)


def sigterm_during_a_stream(server, fake, **fault):
    """SIGTERM to ``server`` once a stream (slowed by ``fault``) has begun: the stream's
    events, and how long after the signal it ended. New connections must be refused."""
    fake.fault("ollama", "qwen2.5:7b", **fault)
    stream = OpenStream(server)
    assert stream.first_event.wait(10)
    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    assert wait_for(lambda: refused(server.port), timeout=2), "a new connection was still accepted after SIGTERM"
    events = stream.result(timeout=45)
    return events, stream.ended_at - signalled


def test_sigterm_lets_an_open_stream_finish_then_exits_0(launch, fake):
    server = launch(WEB_CONCURRENCY="2")
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=chat(MODEL, PROMPT), timeout=10)
    events, seconds = sigterm_during_a_stream(server, fake, chunk_delay=0.2)
    assert not any("error" in event for event in events), events
    assert content_of(events) == answer.json()["choices"][0]["message"]["content"]
    assert seconds < 30  # within SHUTDOWN_GRACE's default
    assert server.process.wait(15) == 0, server.logs()


def test_a_stream_outlasting_the_grace_ends_with_the_shutdown_event(launch, fake):
    server = launch(SHUTDOWN_GRACE="1")
    events, seconds = sigterm_during_a_stream(server, fake, stall_after=2)  # silent after two chunks
    assert events[-1] == {"error": {"message": "The server is shutting down; this stream was ended before its "
                                               "answer was complete.",
                                    "type": "server_shutdown", "code": "shutting_down", "param": None}}
    assert content_of(events[:-1])  # what was streamed before stays
    assert seconds >= 1  # the grace was given
    assert server.process.wait(15) == 0, server.logs()
    assert wait_for(lambda: fake.stats()["active"] == 0, timeout=2)  # the upstream was let go

def _seconds(duration):
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def test_the_reference_topology_compose_file():
    """deploy/docker-compose.yml, read as compose reads it (no docker engine runs the tests):
    PostgreSQL, Redis, two replicas of the project's image and one prober, all on the same
    database and Redis, the replicas health-checked on /ready and given the drain's time."""
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    settings_source = (ROOT / "manallm" / "settings.py").read_text()

    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    ours = {name: service for name, service in services.items() if service.get("image") == "manallm:latest"}
    for name, service in ours.items():
        assert (ROOT / "deploy" / service["build"]["context"] / service["build"]["dockerfile"]).resolve() \
            == ROOT / "Dockerfile", name
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"], name
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert env["MANA_LLM_ADMIN_KEY"].startswith("${MANA_LLM_ADMIN_KEY"), name
        assert env["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY"), name  # one key for every replica
        for variable in env:
            assert f'"{variable}"' in settings_source, f"{name}: {variable} is not a setting"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)

    replicas = {name: service for name, service in ours.items() if "command" not in service}  # the image's CMD
    assert len(replicas) == 2, sorted(replicas)
    assert len({service["ports"][0].split(":")[0] for service in replicas.values()}) == 2
    for name, service in replicas.items():
        assert "/ready" in " ".join(service["healthcheck"]["test"]), name
        grace = float(service["environment"]["SHUTDOWN_GRACE"].removeprefix("${SHUTDOWN_GRACE:-").rstrip("}"))
        assert _seconds(service["stop_grace_period"]) > grace, name  # Docker's SIGKILL waits for the drain
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    probers = [name for name, service in ours.items() if "probe_providers" in service.get("command", [])]
    assert len(probers) == 1, probers
    assert "migrate" in " ".join(services["migrate"]["command"])


@pytest.mark.django_db(transaction=True)  # the DB thread checks its connection first
async def test_the_shutdown_flush_runs_the_hooks_and_waits_for_queued_writes(monkeypatch):
    """What a stopping server does once its last request is over (background.shutdown): the
    on_shutdown hooks, then every database write already queued (a breaker row), in order."""
    import asyncio

    from manallm import background

    written = []
    busy = threading.Event()

    async def hook():
        written.append("hook")

    # Only this hook: the apps' own (usage, the request log, keys' last use) write through
    # the DB thread, which this test holds busy on purpose.
    monkeypatch.setattr(background, "_shutdown_hooks", [])
    background.on_shutdown(hook)
    try:
        blocked = asyncio.ensure_future(background.run_db(busy.wait))  # the DB thread is busy
        queued = asyncio.ensure_future(background.run_db(written.append, "breaker row"))
        stopping = asyncio.ensure_future(background.shutdown())
        done, _ = await asyncio.wait({stopping}, timeout=0.2)
        assert not done and written == ["hook"]  # waits for the queued write
        busy.set()
        await asyncio.wait_for(stopping, timeout=5)
        assert written == ["hook", "breaker row"] and blocked.done() and queued.done()
    finally:
        busy.set()
