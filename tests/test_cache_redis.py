"""The response cache in Redis (README#response-cache): real gateways (daphne) with
REDIS_URL, a real redis-server of each test's own, the fake upstream counting the calls
that reach it. Shared hits across processes, Redis's own expiry, and a Redis that dies
or hangs: requests go on without the cache (counted as bypass), never fail, never wait
long.
"""
import signal
import time

import httpx
import pytest

from tests.helpers import chat, content_of, metric_samples, sse_events, wait_for

QWEN = "ollama/qwen2.5:7b"
ALIASES = f"""
aliases:
  mana/cached:
    cache_ttl: 300
    chain: [{QWEN}]
  mana/brief:
    cache_ttl: 1
    chain: [{QWEN}]
default: mana/cached
"""


@pytest.fixture
def start(make_server, redis_url, tmp_path):
    """start(name) -> a gateway on the test's redis-server (each with its own database)."""
    (tmp_path / "aliases.yaml").write_text(ALIASES)

    def start(name="gw"):
        return make_server({"REDIS_URL": redis_url, "ALIASES_FILE": str(tmp_path / "aliases.yaml")}, name=name)

    return start


def ask(server, text, model="mana/cached", **extra):
    return httpx.post(f"{server.url}/v1/chat/completions", json=chat(model, text, **extra), timeout=20)


def calls(fake):
    return fake.stats()["requests"].get(QWEN, 0)


def bypasses(server, alias="mana/cached"):
    return metric_samples(server.url, "mana_llm_cache_requests_total").get((alias, "bypass"), 0)


def test_two_gateway_processes_share_hits_through_redis(start, fake):
    one, two = start("one"), start("two")
    first = ask(one, "shared")
    assert first.headers["X-Mana-LLM-Cache"] == "miss"
    # The store is written after the answer went out: poll the other process for it.
    assert wait_for(lambda: ask(two, "shared").headers["X-Mana-LLM-Cache"] == "hit", timeout=5)
    hit = ask(two, "shared")
    assert hit.json() == first.json() and hit.headers["X-Mana-LLM-Resolved"] == QWEN
    streamed = ask(two, "shared", stream=True)
    assert streamed.headers["X-Mana-LLM-Cache"] == "hit"
    assert content_of(sse_events(streamed)) == first.json()["choices"][0]["message"]["content"]
    assert calls(fake) == 1


def test_an_entry_expires_with_its_ttl_in_redis(start, fake):
    server = start()
    assert ask(server, "brief", model="mana/brief").headers["X-Mana-LLM-Cache"] == "miss"
    assert wait_for(lambda: ask(server, "brief", model="mana/brief").headers["X-Mana-LLM-Cache"] == "hit", timeout=5)
    # cache_ttl: 1 — Redis drops it within about a second.
    assert wait_for(lambda: ask(server, "brief", model="mana/brief").headers["X-Mana-LLM-Cache"] == "miss",
                    timeout=10)


def test_requests_go_on_without_the_cache_when_redis_is_killed(start, fake, redis_server):
    server = start()
    ask(server, "killed")
    assert wait_for(lambda: ask(server, "killed").headers["X-Mana-LLM-Cache"] == "hit", timeout=5)
    before = bypasses(server)
    redis_server.process.kill()
    redis_server.process.wait()
    upstream = calls(fake)
    for _ in range(5):
        response = ask(server, "killed")
        assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
        assert response.headers["X-Mana-LLM-Cache"] == "miss"
    streamed = ask(server, "killed", stream=True)
    assert "error" not in sse_events(streamed)[-1]
    assert calls(fake) == upstream + 6  # served by the upstream, no error
    assert bypasses(server) - before == 6
    assert server.logs().count("redis unavailable") == 1  # logged once, not per request


def test_a_hung_redis_costs_a_request_at_most_the_cache_timeout(start, fake, redis_server):
    server = start()
    ask(server, "hung")  # the client is connected
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        before = bypasses(server)
        took = []
        for _ in range(5):
            started = time.monotonic()
            response = ask(server, "hung")
            took.append(time.monotonic() - started)
            assert response.status_code == 200 and response.headers["X-Mana-LLM-Cache"] == "miss"
        assert bypasses(server) - before == 5
        # 50 ms for the first; then the cache is left alone for a second. A generous bound
        # for a loaded machine, far below what waiting on the hung Redis would take.
        assert max(took) < 2, took
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    # Redis back: the cache serves again.
    assert wait_for(lambda: ask(server, "hung").headers["X-Mana-LLM-Cache"] == "hit", timeout=10)
