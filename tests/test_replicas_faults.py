"""Replicas sharing one database and one Redis (README#running-several-replicas), as real
processes on real servers: a change made through one reaches the other within a second
(on SQLite and on PostgreSQL); a PostgreSQL outage keeps every read working and refuses
every write whole, and the first request after it succeeds; a killed or hung Redis holds
nothing up while the poll keeps propagation within a second.

The times these tests measure are printed (``pytest -s``) for the closing notes.
"""
import signal
import time

import httpx
import pytest

from tests.helpers import assert_error, chat, time_until

# The product's poll interval (tests/server.py's default is faster), no retries, and
# breakers that open after two failed attempts.
ENV = {"STATE_POLL_INTERVAL": "0.25", "RETRIES": "0", "BREAKER_FAILURE_THRESHOLD": "2"}
ALIAS = {"description": "replicated", "chain": ["groq/replicated-model"]}


def measured(what, seconds):
    print(f"\n[measured] {what}: {seconds * 1000:.0f} ms")
    return seconds


def propagates(what, predicate, server):
    """Poll ``predicate`` (a change seen on ``server``) for up to a second; report the time."""
    seconds = time_until(predicate, timeout=1)
    assert seconds is not None, f"{what}: not within a second\n{server.logs()}"
    return measured(what, seconds)


def put_alias(server, name, body=ALIAS):
    return httpx.put(f"{server.url}/v1/aliases/{name}", json=body, timeout=10)


def timed(call):
    """(response, seconds) of one request."""
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def served(server, model):
    """The entry that answered a chat for ``model`` on ``server``, or None."""
    response = httpx.post(f"{server.url}/v1/chat/completions", json=chat(model), timeout=10)
    return response.headers.get("X-Mana-LLM-Resolved") if response.status_code == 200 else None


def alias_names(server):
    response = httpx.get(f"{server.url}/v1/aliases", timeout=10)
    assert response.status_code == 200, response.text
    return {alias["name"] for alias in response.json()["aliases"]}


def breaker(server, model):
    """The status of deployment groq/<model>'s breaker as ``server`` shows it."""
    response = httpx.get(f"{server.url}/v1/health", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["providers"]["groq"]["models"].get(model, {}).get("status", "healthy")


def trip(server, fake, model):
    """Open groq/<model>'s breaker through ``server``: two failed attempts; each request
    answers within a second (nothing it does waits on Redis or the database)."""
    fake.fault("groq", model, status=500)
    for _ in range(2):
        response, seconds = timed(lambda: httpx.post(f"{server.url}/v1/chat/completions",
                                                     json=chat(f"groq/{model}"), timeout=10))
        assert response.status_code == 503 and seconds < 1, (response.status_code, seconds)
    assert breaker(server, model) == "unhealthy"  # this process: at once


def reset(server):
    return httpx.post(f"{server.url}/v1/health/groq/reset", timeout=10)


@pytest.fixture
def replicas(make_server, shared_database, redis_url, fake):
    env = {**ENV, "REDIS_URL": redis_url}
    a = make_server(env=env, database=shared_database, name="a")
    b = make_server(env=env, database=shared_database, name="b", prepare=False)
    return a, b


# --- propagation ---------------------------------------------------------------------


def test_changes_reach_the_other_replica_within_a_second(replicas, fake, shared_database):
    a, b = replicas
    backend = shared_database.partition(":")[0]
    assert put_alias(a, "mana/replicated").status_code == 201
    propagates(f"alias PUT on A served by B ({backend}, Redis up)",
               lambda: served(b, "mana/replicated") == "groq/replicated-model", b)

    trip(a, fake, "tripped")
    propagates(f"breaker opened on A seen by B ({backend}, Redis up)", lambda: breaker(b, "tripped") == "unhealthy", b)

    assert reset(b).status_code == 200
    assert breaker(b, "tripped") == "healthy"
    propagates(f"breaker reset on B seen by A ({backend}, Redis up)", lambda: breaker(a, "tripped") == "healthy", a)


# --- a PostgreSQL outage -------------------------------------------------------------


def test_postgres_outage_reads_served_writes_refused_then_recovered(make_server, postgres, postgres_url,
                                                                    redis_url, fake):
    env = {**ENV, "REDIS_URL": redis_url}
    a = make_server(env=env, database=postgres_url, name="a")
    b = make_server(env=env, database=postgres_url, name="b", prepare=False)
    # B's sync thread holds a pooled connection from before the outage: the one the
    # restart kills, and the first request after it must not reuse blindly.
    assert put_alias(b, "mana/replicated").status_code == 201
    assert wait_until_served(a, "mana/replicated")
    trip(a, fake, "tripped")
    assert time_until(lambda: breaker(b, "tripped") == "unhealthy", timeout=1) is not None
    before = httpx.get(f"{a.url}/v1/aliases", timeout=10).json()

    postgres.stop()
    try:
        # Reads: everything that needs no write, on both replicas, from memory.
        for server in (a, b):
            assert served(server, "mana/replicated") == "groq/replicated-model"
            assert served(server, "mana/fast-text") is not None
            assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 200
            for path in ("/v1/health", "/health", "/ready"):
                assert httpx.get(f"{server.url}{path}", timeout=10).status_code == 200, path
        assert httpx.get(f"{a.url}/v1/aliases", timeout=10).json() == before
        one = httpx.get(f"{a.url}/v1/aliases/mana/replicated", timeout=10)
        assert one.status_code == 200 and one.json() == {"name": "mana/replicated", **ALIAS}

        # Writes: 503 service_unavailable, nothing changed, each answered at once.
        for response, seconds in (
            timed(lambda: put_alias(a, "mana/during")),
            timed(lambda: put_alias(a, "mana/replicated", {"description": "lost?", "chain": ["groq/other"]})),
            timed(lambda: httpx.delete(f"{a.url}/v1/aliases/mana/replicated", timeout=10)),
            timed(lambda: reset(a)),
        ):
            assert_error(response, 503, "service_unavailable")
            assert seconds < 1, seconds
        assert httpx.get(f"{a.url}/v1/aliases", timeout=10).json() == before
        assert breaker(a, "tripped") == "unhealthy"

        # A transition the request path sees is applied in memory at once and held.
        trip(a, fake, "held")
    finally:
        postgres.start()
    restarted = time.monotonic()

    # The very first request after the restart succeeds, on each replica.
    assert put_alias(b, "mana/after-b").status_code == 201, b.logs()
    measured("first request on B after PostgreSQL restarted (a write, stale pooled connection)",
             time.monotonic() - restarted)
    assert put_alias(a, "mana/after-a").status_code == 201, a.logs()

    # The held breaker state is written: B can only learn it from the database.
    seconds = time_until(lambda: breaker(b, "held") == "unhealthy", timeout=3)
    assert seconds is not None, a.logs()
    measured("breaker held by A during the outage seen by B after the restart",
             time.monotonic() - restarted)

    # Nothing refused during the outage was applied anywhere.
    for server in (a, b):
        assert wait_until_names(server, {"mana/after-a", "mana/after-b"})
        assert "mana/during" not in alias_names(server)
        assert served(server, "mana/replicated") == "groq/replicated-model"
        assert breaker(server, "tripped") == "unhealthy"


def wait_until_served(server, alias):
    return time_until(lambda: served(server, alias) is not None, timeout=1) is not None


def wait_until_names(server, names):
    return time_until(lambda: names <= alias_names(server), timeout=1) is not None


# --- Redis killed or hung ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_redis_fault_holds_nothing_up(make_server, postgres_url, redis_server, fake, fault):
    env = {**ENV, "REDIS_URL": redis_server.url}
    a = make_server(env=env, database=postgres_url, name="a")
    b = make_server(env=env, database=postgres_url, name="b", prepare=False)
    label = f"Redis {fault}"
    assert put_alias(a, "mana/replicated").status_code == 201  # Redis still up
    assert wait_until_served(b, "mana/replicated")

    if fault == "killed":
        redis_server.process.kill()
        redis_server.process.wait(10)
    else:
        redis_server.process.send_signal(signal.SIGSTOP)
    try:
        for status, body in ((201, ALIAS), (200, {"description": "replaced", "chain": ["groq/replaced-model"]})):
            response, seconds = timed(lambda: put_alias(a, "mana/fault", body))
            assert response.status_code == status and seconds < 1, (response.status_code, seconds)
            measured(f"alias PUT answered ({label})", seconds)
            target = body["chain"][0]
            propagates(f"alias PUT on A served by B ({label})", lambda: served(b, "mana/fault") == target, b)

        trip(a, fake, "tripped")
        propagates(f"breaker opened on A seen by B ({label})", lambda: breaker(b, "tripped") == "unhealthy", b)

        response, seconds = timed(lambda: reset(b))
        assert response.status_code == 200 and seconds < 1, (response.status_code, seconds)
        measured(f"breaker reset answered ({label})", seconds)
        propagates(f"breaker reset on B seen by A ({label})", lambda: breaker(a, "tripped") == "healthy", a)

        for server in (a, b):
            response, seconds = timed(lambda: httpx.post(f"{server.url}/v1/chat/completions",
                                                         json=chat("mana/replicated"), timeout=10))
            assert response.status_code == 200 and seconds < 1, (response.status_code, seconds)
            measured(f"chat request ({label})", seconds)
    finally:
        if fault == "hung":
            redis_server.process.send_signal(signal.SIGCONT)


# --- readiness -------------------------------------------------------------------------


def test_ready_only_once_the_state_is_held(make_server, postgres, postgres_url, fake):
    """A replica started while PostgreSQL is down is alive (/health) but not ready; it
    becomes ready, and serves, as soon as the database answers."""
    server = make_server(env=ENV, database=postgres_url)  # migrated, aliases imported
    server.stop()
    postgres.stop()
    try:
        server.start()
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        response = httpx.get(f"{server.url}/ready", timeout=10)
        assert response.status_code == 503, response.text
        assert response.json() == {"status": "starting", "waiting_for": ["aliases", "breakers", "consumers"]}
    finally:
        postgres.start()
    seconds = time_until(lambda: httpx.get(f"{server.url}/ready", timeout=10).status_code == 200, timeout=2)
    assert seconds is not None, server.logs()
    measured("/ready turned 200 after PostgreSQL came back", seconds)
    assert httpx.get(f"{server.url}/ready", timeout=10).json() == {"status": "ready"}
    assert served(server, "mana/fast-text") is not None
