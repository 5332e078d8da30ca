"""Issue 11 across processes (README#consumers): two gateway processes sharing one database
(SQLite and PostgreSQL). A key issued, revoked, a consumer deactivated, narrowed or deleted
through one is enforced by the other within a second; during a PostgreSQL outage the keys
keep working from memory and every consumer write is a 503 that changes nothing."""
import time

import httpx

from tests.helpers import assert_error, chat, create_consumer, issue_key, time_until, wait_for

ADMIN_KEY = "admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# The product's poll interval (tests/server.py's default is faster); no Redis: the poll alone.
ENV = {"STATE_POLL_INTERVAL": "0.25", "MANA_LLM_ADMIN_KEY": ADMIN_KEY, "RETRIES": "0"}


def status(server, key, model="mana/fast-text"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}/v1/chat/completions", json=chat(model), headers=headers, timeout=10)


def within_a_second(what, predicate, server):
    seconds = time_until(predicate, timeout=1)
    assert seconds is not None, f"{what}: not within a second\n{server.logs()[-3000:]}"
    print(f"\n[measured] {what}: {seconds * 1000:.0f} ms")


def refused_as(server, key, word):
    response = status(server, key)
    return response.status_code == 401 and word in response.json()["error"]["message"]


def test_key_changes_reach_the_other_process_within_a_second(make_server, shared_database, fake):
    a = make_server(env=ENV, database=shared_database, name="a")
    b = make_server(env=ENV, database=shared_database, name="b", prepare=False)
    assert status(b, None).status_code == 200  # open: no key of any kind yet

    create_consumer(a, ADMIN_KEY, "team-a", allowed_models=["mana/*"])
    # A NUL in a name or prefix never reaches the database (PostgreSQL would refuse the query).
    assert_error(httpx.get(f"{a.url}/v1/consumers/a%00b", headers=ADMIN, timeout=10), 404, "invalid_request_error")
    assert_error(httpx.delete(f"{a.url}/v1/consumers/team-a/keys/abc%00defg", headers=ADMIN, timeout=10),
                 404, "invalid_request_error")
    key = issue_key(a, ADMIN_KEY, "team-a")["key"]
    within_a_second("key issued on A accepted by B", lambda: status(b, key).status_code == 200, b)
    assert status(b, None).status_code == 401  # B knows a consumer key exists: closed

    # Revoked through A: refused by B.
    assert httpx.delete(f"{a.url}/v1/consumers/team-a/keys/{key[3:11]}", headers=ADMIN, timeout=10).status_code == 204
    within_a_second("key revoked on A refused by B", lambda: refused_as(b, key, "revoked"), b)

    # Only B used that key: its last use reaches A through the database (written every few seconds).
    def last_used_on_a():
        keys = httpx.get(f"{a.url}/v1/consumers/team-a", headers=ADMIN, timeout=10).json()["keys"]
        return next(k["last_used_unix"] for k in keys if k["prefix"] == key[3:11])

    assert wait_for(last_used_on_a, timeout=15, interval=0.2), b.logs()[-3000:]
    assert abs(last_used_on_a() - time.time()) < 60

    # Deactivated through B: refused by A; and back.
    second = issue_key(b, ADMIN_KEY, "team-a")["key"]
    within_a_second("second key accepted by A", lambda: status(a, second).status_code == 200, a)
    assert httpx.patch(f"{b.url}/v1/consumers/team-a", json={"active": False}, headers=ADMIN).status_code == 200
    within_a_second("consumer deactivated on B refused by A", lambda: refused_as(a, second, "deactivated"), a)
    assert httpx.patch(f"{b.url}/v1/consumers/team-a", json={"active": True}, headers=ADMIN).status_code == 200
    within_a_second("consumer reactivated on B served by A", lambda: status(a, second).status_code == 200, a)

    # Scope narrowed through A: B refuses what is outside it.
    assert status(b, second, "mana/long-form").status_code == 200
    assert httpx.patch(f"{a.url}/v1/consumers/team-a", json={"allowed_models": ["mana/fast-text"]},
                       headers=ADMIN).status_code == 200
    within_a_second("scope narrowed on A enforced by B",
                    lambda: status(b, second, "mana/long-form").status_code == 403, b)

    # Deleted through A: its keys are refused by B.
    assert httpx.delete(f"{a.url}/v1/consumers/team-a", headers=ADMIN, timeout=10).status_code == 204
    within_a_second("consumer deleted on A refused by B", lambda: status(b, second).status_code == 401, b)


def test_postgres_outage_keys_served_writes_refused(make_server, postgres, postgres_url, fake):
    a = make_server(env=ENV, database=postgres_url, name="a")
    create_consumer(a, ADMIN_KEY, "steady")
    key = issue_key(a, ADMIN_KEY, "steady")
    revoked = issue_key(a, ADMIN_KEY, "steady")
    assert httpx.delete(f"{a.url}/v1/consumers/steady/keys/{revoked['prefix']}", headers=ADMIN).status_code == 204

    postgres.stop()
    try:
        # The request path needs no database: the key is served, the revoked one refused.
        assert status(a, key["key"]).status_code == 200
        assert refused_as(a, revoked["key"], "revoked")
        # Every consumer write: 503, nothing changed; answered at once.
        for method, path, body in (("POST", "/v1/consumers", {"name": "during"}),
                                   ("PATCH", "/v1/consumers/steady", {"active": False}),
                                   ("POST", "/v1/consumers/steady/keys", {}),
                                   ("DELETE", f"/v1/consumers/steady/keys/{key['prefix']}", None),
                                   ("DELETE", "/v1/consumers/steady", None)):
            started = time.monotonic()
            response = httpx.request(method, f"{a.url}{path}", json=body, headers=ADMIN, timeout=10)
            assert_error(response, 503, "service_unavailable")
            assert time.monotonic() - started < 5
        assert status(a, key["key"]).status_code == 200
    finally:
        postgres.start()

    # Nothing refused during the outage happened.
    response = httpx.get(f"{a.url}/v1/consumers/steady", headers=ADMIN, timeout=10)
    assert response.status_code == 200, a.logs()[-3000:]
    assert response.json()["active"] is True and len(response.json()["keys"]) == 2
    assert status(a, key["key"]).status_code == 200
    assert httpx.get(f"{a.url}/v1/consumers/during", headers=ADMIN, timeout=10).status_code == 404
