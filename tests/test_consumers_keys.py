"""Issue 11: consumer keys on a real gateway (README#consumers) — issued once, authenticating as
their consumer through the official SDK, refused with the reason once revoked, expired or
deactivated, never shown again in an answer, a log line or a metric."""
import hashlib
import time

import httpx
import openai
import pytest

from tests.helpers import (assert_error, assert_sdk_error, chat, create_consumer, issue_key, sdk, wait_for)
from tests.server import module_gateway

ADMIN_KEY = "admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

gw = module_gateway("consumer-keys", MANA_LLM_ADMIN_KEY=ADMIN_KEY)


def ask(gateway, key):
    return sdk(gateway, api_key=key).chat.completions.with_raw_response.create(
        model="mana/fast-text", messages=[{"role": "user", "content": "hello"}])


def consumer(gateway, name):
    response = httpx.get(f"{gateway.url}/v1/consumers/{name}", headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_issued_key_authenticates_as_its_consumer_and_is_shown_once(gw, fake):
    create_consumer(gw, ADMIN_KEY, "billing-bot", description="the billing team")
    issued = issue_key(gw, ADMIN_KEY, "billing-bot")
    key = issued["key"]
    assert key.startswith("mk-") and len(key) == 43
    assert set(key[3:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert issued["prefix"] == key[3:11] and issued["expires_at"] is None and issued["created"]

    raw = ask(gw, key)
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content

    # Listed by its prefix only; its last use shows (this process's note, written within seconds).
    listed = consumer(gw, "billing-bot")["keys"]
    assert [k["prefix"] for k in listed] == [issued["prefix"]]
    assert set(listed[0]) == {"prefix", "created", "expires_at", "revoked", "last_used_unix"}
    assert listed[0]["revoked"] is False
    assert abs(listed[0]["last_used_unix"] - time.time()) < 60
    everything = httpx.get(f"{gw.url}/v1/consumers", headers=ADMIN, timeout=10).text
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert key not in everything and key[3:] not in everything and digest not in everything

    # The access line names the consumer.
    assert wait_for(lambda: "POST /v1/chat/completions 200" in gw.logs() and "consumer=billing-bot" in gw.logs())


def test_revoked_key_is_refused_and_says_so(gw, fake):
    create_consumer(gw, ADMIN_KEY, "rotating")
    old, new = issue_key(gw, ADMIN_KEY, "rotating"), issue_key(gw, ADMIN_KEY, "rotating")
    assert ask(gw, old["key"]).http_response.status_code == 200

    response = httpx.delete(f"{gw.url}/v1/consumers/rotating/keys/{old['prefix']}", headers=ADMIN, timeout=10)
    assert response.status_code == 204
    with pytest.raises(openai.AuthenticationError) as excinfo:
        ask(gw, old["key"])
    error = assert_sdk_error(excinfo, openai.AuthenticationError, 401, "authentication_error")
    assert "revoked" in error.message and "rotating" not in error.message
    # Rotation: the other key still works; the revoked one stays listed.
    assert ask(gw, new["key"]).http_response.status_code == 200
    keys = {k["prefix"]: k["revoked"] for k in consumer(gw, "rotating")["keys"]}
    assert keys == {old["prefix"]: True, new["prefix"]: False}
    # Revoking again is harmless; an unknown prefix is a 404.
    assert httpx.delete(f"{gw.url}/v1/consumers/rotating/keys/{old['prefix']}", headers=ADMIN).status_code == 204
    assert_error(httpx.delete(f"{gw.url}/v1/consumers/rotating/keys/nosuchky", headers=ADMIN),
                 404, "invalid_request_error", param="prefix")


def test_expired_key_is_refused_and_says_so(gw, fake):
    create_consumer(gw, ADMIN_KEY, "short-lived")
    past = issue_key(gw, ADMIN_KEY, "short-lived", expires_at="2020-01-01T00:00:00Z")
    assert past["expires_at"].startswith("2020-01-01T00:00:00")
    with pytest.raises(openai.AuthenticationError) as excinfo:
        ask(gw, past["key"])
    error = assert_sdk_error(excinfo, openai.AuthenticationError, 401, "authentication_error")
    assert "expired" in error.message and "short-lived" not in error.message

    # A real expiry a moment ahead (Unix seconds): served until then, refused after.
    soon = issue_key(gw, ADMIN_KEY, "short-lived", expires_at=time.time() + 1.5)
    assert ask(gw, soon["key"]).http_response.status_code == 200

    def refused():
        try:
            ask(gw, soon["key"])
        except openai.AuthenticationError as exc:
            return "expired" in exc.message
        return False

    assert wait_for(refused, timeout=10, interval=0.1)


def test_deactivated_consumer_and_unknown_keys_are_refused(gw, fake):
    create_consumer(gw, ADMIN_KEY, "paused-team")
    key = issue_key(gw, ADMIN_KEY, "paused-team")["key"]
    response = httpx.patch(f"{gw.url}/v1/consumers/paused-team", json={"active": False}, headers=ADMIN, timeout=10)
    assert response.status_code == 200 and response.json()["active"] is False
    with pytest.raises(openai.AuthenticationError) as excinfo:
        ask(gw, key)
    error = assert_sdk_error(excinfo, openai.AuthenticationError, 401, "authentication_error")
    assert "deactivated" in error.message and "paused" not in error.message
    assert httpx.patch(f"{gw.url}/v1/consumers/paused-team", json={"active": True}, headers=ADMIN).status_code == 200
    assert ask(gw, key).http_response.status_code == 200

    # An mk- key nobody issued, and any other key once consumer keys exist: 401.
    for bogus in ("mk-" + "A" * 40, key[:-1] + ("B" if key[-1] != "B" else "C"), "sk-anything"):
        response = httpx.post(f"{gw.url}/v1/chat/completions", json=chat(), timeout=10,
                              headers={"Authorization": f"Bearer {bogus}"})
        assert_error(response, 401, "authentication_error")
    # X-API-Key works as Bearer does.
    response = httpx.post(f"{gw.url}/v1/chat/completions", json=chat(), headers={"X-API-Key": key}, timeout=10)
    assert response.status_code == 200, response.text


def test_consumer_key_is_no_admin_key(gw, fake):
    create_consumer(gw, ADMIN_KEY, "curious")
    key = issue_key(gw, ADMIN_KEY, "curious")["key"]
    bearer = {"Authorization": f"Bearer {key}"}
    assert_error(httpx.get(f"{gw.url}/v1/consumers", headers=bearer, timeout=10), 403, "permission_error")
    assert_error(httpx.post(f"{gw.url}/v1/consumers/curious/keys", headers=bearer, timeout=10),
                 403, "permission_error")
    assert_error(httpx.put(f"{gw.url}/v1/aliases/mana/x", headers=bearer, timeout=10,
                           json={"chain": ["ollama/qwen2.5:7b"]}), 403, "permission_error")
    # Reads of aliases and models are a client's.
    assert httpx.get(f"{gw.url}/v1/aliases", headers=bearer, timeout=10).status_code == 200


def test_no_key_or_hash_in_logs_answers_or_metrics(gw, fake):
    create_consumer(gw, ADMIN_KEY, "secretive")
    key = issue_key(gw, ADMIN_KEY, "secretive")["key"]
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert ask(gw, key).http_response.status_code == 200
    stream = sdk(gw, api_key=key).chat.completions.create(
        model="mana/fast-text", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert httpx.delete(f"{gw.url}/v1/consumers/secretive/keys/{key[3:11]}", headers=ADMIN).status_code == 204
    refused = httpx.post(f"{gw.url}/v1/chat/completions", json=chat(), timeout=10,
                         headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401
    texts = [refused.text, httpx.get(f"{gw.url}/metrics", timeout=10).text,
             httpx.get(f"{gw.url}/v1/consumers/secretive", headers=ADMIN, timeout=10).text]
    assert wait_for(lambda: "consumer=secretive" in gw.logs())
    texts.append(gw.logs())
    for text in texts:
        assert key not in text and key[3:] not in text and digest not in text


def test_open_gateway_until_the_first_consumer_key(make_server, fake):
    server = make_server(env={"MANA_LLM_ADMIN_KEY": ADMIN_KEY})

    def keyless():
        return httpx.post(f"{server.url}/v1/chat/completions", json=chat(), timeout=10)

    # Open: no MANA_LLM_API_KEY, no consumer key. Keyless and any non-mk key are anonymous.
    assert keyless().status_code == 200
    assert ask(server, "sk-whatever-the-sdk-sends").http_response.status_code == 200
    assert wait_for(lambda: "consumer=anonymous" in server.logs())
    create_consumer(server, ADMIN_KEY, "first")
    assert keyless().status_code == 200  # a consumer without a key changes nothing yet
    key = issue_key(server, ADMIN_KEY, "first")["key"]

    # Closed from the first key on: keyless and unknown keys are 401, the key and the admin key serve.
    assert_error(keyless(), 401, "authentication_error")
    with pytest.raises(openai.AuthenticationError):
        ask(server, "sk-whatever-the-sdk-sends")
    assert ask(server, key).http_response.status_code == 200
    assert ask(server, ADMIN_KEY).http_response.status_code == 200
    # /health and /metrics stay open.
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    assert httpx.get(f"{server.url}/metrics", timeout=5).status_code == 200
