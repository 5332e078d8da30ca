"""The helpers every test module shares: ports, polling with a deadline, building
requests, reading answers and checking errors. One place for each, so a test module
never imports from another test module (the gateway process harness is tests/server.py).
"""
import asyncio
import glob
import inspect
import json
import os
import shutil
import socket
import time

import pytest
from openai import OpenAI

T0 = 1_000_000.0
SECRETS = ["test-groq-key", "test-openrouter-key", "test-together-key", "test-openai-key", "test-google-key"]


# --- ports ------------------------------------------------------------------------------


def free_port():
    """A loopback port that was free a moment ago (for a server a test is about to start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unused_port():
    """A loopback port nothing listens on (connections to it are refused)."""
    return free_port()


# --- polling: state another thread or process changes ---------------------------------


def wait_for(predicate, timeout=5.0, interval=0.02):
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def time_until(predicate, timeout=5.0, interval=0.02):
    """Seconds until ``predicate`` held (polled with a deadline), or None if it never did:
    for tests that report how long propagation or recovery took."""
    start = time.monotonic()
    return time.monotonic() - start if wait_for(predicate, timeout, interval) else None


async def eventually(predicate, timeout=3.0, interval=0.02):
    """``wait_for`` for async tests: polls without blocking the event loop; ``predicate``
    may be a coroutine function (a request to the app under test)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


# --- time -------------------------------------------------------------------------------


class FakeClock:
    """A clock that moves only when a test says so (breaker windows, backoff)."""

    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


# --- requests ---------------------------------------------------------------------------


def user_messages(text="hi"):
    """One user message, as a ``messages`` list."""
    return [{"role": "user", "content": text}]


def user(text="hi"):
    """A chat request body holding one user message (what an adapter's ``chat`` takes)."""
    return {"messages": user_messages(text)}


def chat(model="mana/fast-text", text="hi", **extra):
    """A /v1/chat/completions body; ``model=None`` leaves the model out."""
    body = {"messages": user_messages(text), **extra}
    if model is not None:
        body["model"] = model
    return body


def sdk(gateway, api_key="x", **kwargs):
    """The official OpenAI client pointed at a gateway, without its own retries."""
    return OpenAI(base_url=f"{gateway.url}/v1", api_key=api_key, max_retries=0, timeout=20, **kwargs)


# --- answers ----------------------------------------------------------------------------


async def collect(iterator):
    """Drain an async iterator (a stream of chunks) into a list."""
    return [item async for item in iterator]


def text_of(chunks):
    """The streamed text: the joined delta content of chat.completion.chunk dicts."""
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))


def sse_events(response):
    """Check OpenAI's SSE framing and return the JSON events before ``[DONE]``."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    text = response.text
    assert text.endswith("\n\n"), text[-200:]
    blocks = text[:-2].split("\n\n")
    for block in blocks:
        assert block.startswith("data: ") and "\n" not in block, block
    payloads = [block[len("data: "):] for block in blocks]
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1, payloads[-3:]
    return [json.loads(payload) for payload in payloads[:-1]]


def content_of(events):
    """The streamed text of SSE events (tolerates events without choices or delta)."""
    return "".join((choice.get("delta") or {}).get("content") or ""
                   for event in events for choice in event.get("choices") or [])


# --- errors -----------------------------------------------------------------------------


def assert_no_traceback(text):
    assert "Traceback" not in text and 'File "' not in text and "most recent call last" not in text, text


def assert_error(response, status, error_type, param=..., code=...):
    """The OpenAI envelope with the given status and type; returns the inner error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_no_traceback(response.text)
    error = response.json()["error"]
    assert {"message", "type", "code", "param"} <= set(error), error
    assert error["type"] == error_type, error
    assert isinstance(error["message"], str) and error["message"]
    if param is not ...:
        assert error["param"] == param, error
    if code is not ...:
        assert error["code"] == code, error
    for secret in SECRETS:
        assert secret not in response.text
    return error


def assert_sdk_error(excinfo, cls, status, error_type, param=...):
    """The same check for an error the openai package raised (``pytest.raises`` info)."""
    exc = excinfo.value
    assert type(exc) is cls, type(exc)
    assert exc.status_code == status
    assert exc.type == error_type, exc.body
    if param is not ...:
        assert exc.param == param, exc.body
    assert_no_traceback(exc.response.text)
    return exc


def server_binary(name: str) -> str:
    """The path of a server program a test needs (redis-server, postgres, …).

    Missing: skipped on a developer's machine, a failure under CI=true — .ci/run installs
    every server the suite needs, so a green CI means these tests ran.
    """
    path = shutil.which(name) or _debian_versioned_binary(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; under CI=true a missing server is a failure, not a skip")
        pytest.skip(message)
    return path


def _debian_versioned_binary(name: str) -> str | None:
    """Debian keeps PostgreSQL's server programs (postgres, initdb) off PATH, in
    /usr/lib/postgresql/<major>/bin: the newest one installed."""
    found = {int(path.split("/")[4]): path for path in glob.glob(f"/usr/lib/postgresql/[0-9]*/bin/{name}")}
    return found[max(found)] if found else None


def redis_up(port: int) -> bool:
    """True when a Redis server answers PING on this loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ci_tool(name: str) -> str:
    """The path of a command-line tool .ci/run unpacks from a Debian package into
    .ci/tools without installing it (promtool); else found like a server (PATH), skipped
    or, under CI=true, failed when missing."""
    unpacked = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ci", "tools", "usr", "bin", name)
    return unpacked if os.access(unpacked, os.X_OK) else server_binary(name)


# --- the admin of a real gateway ------------------------------------------------------------


def create_superuser(server, username: str = "root", password: str = "console-pw-1") -> tuple[str, str]:
    """A superuser in a gateway process's database (through ``manage.py shell``)."""
    server.manage("shell", "-c", "from django.contrib.auth import get_user_model; "
                  f"get_user_model().objects.create_superuser({username!r}, 'root@example.com', {password!r})")
    return username, password


def csrf_token_of(html: str) -> str:
    """The CSRF token a Django form carries."""
    import re

    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, html[:2000]
    return match.group(1)


def admin_login(server, username: str, password: str):
    """An httpx client logged in to a gateway's admin (the login form, with its CSRF token)."""
    import httpx

    client = httpx.Client(base_url=server.url, timeout=20)
    token = csrf_token_of(client.get("/admin/login/").text)
    response = client.post("/admin/login/", data={"username": username, "password": password,
                                                  "csrfmiddlewaretoken": token, "next": "/admin/"})
    assert response.status_code == 302, response.text[:2000]
    return client


# --- consumers (README#consumers) -------------------------------------------------------


def create_consumer(gateway, admin_key, name, **fields):
    """Create a consumer through the management API (asserting the 201); its JSON."""
    import httpx

    response = httpx.post(f"{gateway.url}/v1/consumers", json={"name": name, **fields}, timeout=10,
                          headers={"Authorization": f"Bearer {admin_key}"})
    assert response.status_code == 201, response.text
    return response.json()


def issue_key(gateway, admin_key, name, **body):
    """Issue a key for a consumer through the management API (asserting the 201): the answer,
    ``{"key", "prefix", "created", "expires_at"}``."""
    import httpx

    response = httpx.post(f"{gateway.url}/v1/consumers/{name}/keys", json=body, timeout=10,
                          headers={"Authorization": f"Bearer {admin_key}"})
    assert response.status_code == 201, response.text
    return response.json()
# --- consumers ---------------------------------------------------------------------------


def new_consumer_key():
    """A consumer key of the issued shape: ``mk-`` and 40 URL-safe characters."""
    import secrets

    return "mk-" + secrets.token_urlsafe(30)


def add_consumer(server, name, key, **fields):
    """Create a consumer and one key for it in ``server``'s database, through the ORM of a
    ``manage.py shell`` run with the server's environment (only the key's hash is stored)."""
    code = (
        "from consumers.models import Consumer, ConsumerKey\n"
        "from consumers.table import key_hash\n"
        f"consumer = Consumer.objects.create(name={name!r}, **{fields!r})\n"
        f"ConsumerKey.objects.create(consumer=consumer, prefix={key[3:11]!r}, hash=key_hash({key!r}))\n"
    )
    server.manage("shell", "-c", code)


def key_served(server, name, key, timeout=5.0):
    """Wait until ``server`` attributes ``key`` to consumer ``name`` (its own usage is readable
    with it), without spending a request of the consumer's limits."""
    import httpx

    def known():
        response = httpx.get(f"{server.url}/v1/usage", params={"consumer": name},
                             headers={"Authorization": f"Bearer {key}"}, timeout=5)
        return response.status_code == 200

    return wait_for(known, timeout=timeout, interval=0.05)


# --- metrics ----------------------------------------------------------------------------


def metric_samples(base_url, name):
    """One metric of a gateway's /metrics: {tuple of its label values, in label order: value}."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return {tuple(sample.labels.values()): sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name}
