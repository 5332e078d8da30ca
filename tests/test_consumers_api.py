"""Issue 11: the consumer management API on a real gateway (README#consumers) — the admin
key for reads and writes alike, one shape in and out, a 400 naming the field for every
bad field, 404 for unknown names, never a key or a hash in an answer."""
import pytest

from tests.helpers import assert_error, create_consumer, issue_key
from tests.server import module_gateway

ADMIN_KEY = "admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENT = {"Authorization": "Bearer client-key"}

gw = module_gateway("consumer-api", MANA_LLM_ADMIN_KEY=ADMIN_KEY, MANA_LLM_API_KEY="client-key")


def test_admin_key_needed_for_reads_and_writes(http):
    for method, path in (("GET", "/v1/consumers"), ("POST", "/v1/consumers"), ("GET", "/v1/consumers/x"),
                         ("PATCH", "/v1/consumers/x"), ("DELETE", "/v1/consumers/x"),
                         ("POST", "/v1/consumers/x/keys"), ("DELETE", "/v1/consumers/x/keys/abcdefgh")):
        assert_error(http.request(method, path, json={}), 401, "authentication_error")
        assert_error(http.request(method, path, json={}, headers=CLIENT), 403, "permission_error")


def test_create_read_update_delete(gw, http):
    body = {"name": "support-bot", "description": "the support team's bot", "allowed_models": ["mana/*"],
            "rpm": 60, "tpm": 100000, "max_concurrent": 4, "token_budget": 5000000, "budget_period": "month",
            "active": True}
    created = create_consumer(gw, ADMIN_KEY, **{**body, "name": "support-bot"})
    assert created == {**body, "keys": []}
    assert http.get("/v1/consumers/support-bot", headers=ADMIN).json() == created
    listed = http.get("/v1/consumers", headers=ADMIN).json()["consumers"]
    assert created in listed

    # Defaults: no scope, no limits, active.
    minimal = create_consumer(gw, ADMIN_KEY, "minimal")
    assert minimal == {"name": "minimal", "description": "", "active": True, "allowed_models": [], "rpm": None,
                       "tpm": None, "max_concurrent": None, "token_budget": None, "budget_period": None, "keys": []}

    # PATCH changes only what it names; dropping the budget drops its period.
    response = http.patch("/v1/consumers/support-bot", json={"rpm": 120, "token_budget": None}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {**created, "rpm": 120, "token_budget": None, "budget_period": None}
    response = http.patch("/v1/consumers/support-bot", json={"rpm": None, "description": "x"}, headers=ADMIN)
    assert response.json()["rpm"] is None and response.json()["description"] == "x"

    # A duplicate name is a 400 on the name.
    assert_error(http.post("/v1/consumers", json={"name": "minimal"}, headers=ADMIN), 400, "invalid_request_error",
                 param="name", code="consumer_exists")

    key = issue_key(gw, ADMIN_KEY, "minimal")
    assert http.get("/v1/consumers/minimal", headers=ADMIN).json()["keys"][0]["prefix"] == key["prefix"]
    assert http.delete("/v1/consumers/minimal", headers=ADMIN).status_code == 204
    assert_error(http.get("/v1/consumers/minimal", headers=ADMIN), 404, "invalid_request_error", param="name")
    assert_error(http.delete("/v1/consumers/minimal", headers=ADMIN), 404, "invalid_request_error")
    assert_error(http.patch("/v1/consumers/minimal", json={}, headers=ADMIN), 404, "invalid_request_error")
    assert_error(http.post("/v1/consumers/minimal/keys", headers=ADMIN), 404, "invalid_request_error")
    # The deleted consumer's key went with it.
    response = http.post("/v1/chat/completions", json={"model": "mana/fast-text", "messages": []},
                         headers={"Authorization": f"Bearer {key['key']}"})
    assert_error(response, 401, "authentication_error")
    assert http.put("/v1/consumers/support-bot", json={}, headers=ADMIN).status_code == 405


BAD_CONSUMERS = [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "Upper"}, "name"),
    ({"name": "-dash-first"}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "a" * 65}, "name"),
    ({"name": "ok\n"}, "name"),
    ({"name": 7}, "name"),
    ({"name": "env"}, "name"),
    ({"name": "admin"}, "name"),
    ({"name": "anonymous"}, "name"),
    ({"name": "ok", "description": 5}, "description"),
    ({"name": "ok", "description": "x" * 2001}, "description"),
    ({"name": "ok", "description": "nul\x00"}, "description"),
    ({"name": "ok", "active": "yes"}, "active"),
    ({"name": "ok", "active": None}, "active"),
    ({"name": "ok", "allowed_models": "mana/*"}, "allowed_models"),
    ({"name": "ok", "allowed_models": [5]}, "allowed_models"),
    ({"name": "ok", "allowed_models": [""]}, "allowed_models"),
    ({"name": "ok", "allowed_models": ["ma*na"]}, "allowed_models"),
    ({"name": "ok", "allowed_models": ["**"]}, "allowed_models"),
    ({"name": "ok", "allowed_models": ["mana/x\n"]}, "allowed_models"),
    ({"name": "ok", "allowed_models": [" mana/x"]}, "allowed_models"),
    ({"name": "ok", "allowed_models": ["mana/x", "mana/x"]}, "allowed_models"),
    ({"name": "ok", "allowed_models": ["m" * 301]}, "allowed_models"),
    ({"name": "ok", "rpm": 0}, "rpm"),
    ({"name": "ok", "rpm": -1}, "rpm"),
    ({"name": "ok", "rpm": 1.5}, "rpm"),
    ({"name": "ok", "rpm": "10"}, "rpm"),
    ({"name": "ok", "rpm": True}, "rpm"),
    ({"name": "ok", "rpm": 2**31}, "rpm"),
    ({"name": "ok", "tpm": 0}, "tpm"),
    ({"name": "ok", "tpm": "many"}, "tpm"),
    ({"name": "ok", "max_concurrent": 0}, "max_concurrent"),
    ({"name": "ok", "max_concurrent": [1]}, "max_concurrent"),
    ({"name": "ok", "token_budget": -5, "budget_period": "day"}, "token_budget"),
    ({"name": "ok", "token_budget": 2**63, "budget_period": "day"}, "token_budget"),
    ({"name": "ok", "token_budget": 1000}, "budget_period"),
    ({"name": "ok", "token_budget": 1000, "budget_period": "week"}, "budget_period"),
    ({"name": "ok", "token_budget": 1000, "budget_period": 1}, "budget_period"),
    ({"name": "ok", "budget_period": "day"}, "budget_period"),
    ({"name": "ok", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize("body, field", BAD_CONSUMERS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_CONSUMERS)])
def test_bad_field_is_a_400_naming_it(http, body, field):
    error = assert_error(http.post("/v1/consumers", json=body, headers=ADMIN), 400, "invalid_request_error",
                         param=field)
    assert field in error["message"]
    if body.get("name") == "ok":
        assert_error(http.get("/v1/consumers/ok", headers=ADMIN), 404, "invalid_request_error")  # nothing written


@pytest.mark.parametrize("content", [b"[]", b"null", b"\"x\"", b"{not json"])
def test_body_that_is_no_object(http, content):
    response = http.post("/v1/consumers", content=content, headers={**ADMIN, "Content-Type": "application/json"})
    assert_error(response, 400, "invalid_request_error")


@pytest.mark.parametrize("body, field", [
    ({"rpm": 0}, "rpm"),
    ({"name": "renamed"}, "name"),
    ({"token_budget": 5}, "budget_period"),
    ({"allowed_models": ["a*b"]}, "allowed_models"),
    ({"active": 1}, "active"),
    ({"unknown": 1}, "unknown"),
])
def test_bad_patch_is_a_400_and_changes_nothing(gw, http, body, field):
    name = f"patched-{field}"
    before = create_consumer(gw, ADMIN_KEY, name, rpm=10)
    assert_error(http.patch(f"/v1/consumers/{name}", json=body, headers=ADMIN), 400, "invalid_request_error",
                 param=field)
    assert http.get(f"/v1/consumers/{name}", headers=ADMIN).json() == before


def test_key_requests(gw, http):
    create_consumer(gw, ADMIN_KEY, "keyed")
    for body, field in (({"expires_at": "tomorrow"}, "expires_at"), ({"expires_at": True}, "expires_at"),
                        ({"expires_at": ""}, "expires_at"), ({"expires_at": 1e20}, "expires_at"),
                        ({"colour": 1}, "colour"), ([], "body")):
        assert_error(http.post("/v1/consumers/keyed/keys", json=body, headers=ADMIN), 400, "invalid_request_error",
                     param=field)
    assert http.get("/v1/consumers/keyed", headers=ADMIN).json()["keys"] == []  # nothing issued
    # No body, {}, ISO with an offset, Unix seconds, null: all issue a key.
    assert http.post("/v1/consumers/keyed/keys", headers=ADMIN).status_code == 201
    assert issue_key(gw, ADMIN_KEY, "keyed", expires_at="2031-05-01T12:00:00+02:00")["expires_at"] == \
        "2031-05-01T10:00:00+00:00"
    assert issue_key(gw, ADMIN_KEY, "keyed", expires_at=1956528000)["expires_at"] == "2032-01-01T00:00:00+00:00"
    assert issue_key(gw, ADMIN_KEY, "keyed", expires_at=None)["expires_at"] is None
    keys = http.get("/v1/consumers/keyed", headers=ADMIN).json()["keys"]
    assert len(keys) == 4 and len({k["prefix"] for k in keys}) == 4
    assert all(set(k) == {"prefix", "created", "expires_at", "revoked", "last_used_unix"} for k in keys)


def test_hostile_names_and_fields_are_clean_errors(gw, http):
    create_consumer(gw, ADMIN_KEY, "sturdy")
    for path in ("/v1/consumers/%00", "/v1/consumers/a%0Ab", "/v1/consumers/" + "n" * 5000,
                 "/v1/consumers/%F0%9F%98%80"):
        assert_error(http.get(path, headers=ADMIN), 404, "invalid_request_error")
    for prefix in ("%00%00%00%00%00%00%00%00", "short", "x" * 5000):
        assert_error(http.delete(f"/v1/consumers/sturdy/keys/{prefix}", headers=ADMIN), 404, "invalid_request_error")
    for content, field in ((b'{"name": "ok", "description": "lone \\ud800"}', None),  # refused by the parser
                           (b'{"name": "ok", "description": "nul \\u0000"}', "description"),
                           (b'{"name": "ok", "allowed_models": ["a\\u0000"]}', "allowed_models"),
                           (b'{"name": "ok", "\\u0000": 1}', "'\\x00'"),
                           (b'{"name": "ok", "rpm": 1e400}', None),
                           (b'{"name": "ok", "rpm": 100000000000000000000000000000000}', "rpm")):
        response = http.post("/v1/consumers", content=content, headers={**ADMIN, "Content-Type": "application/json"})
        assert_error(response, 400, "invalid_request_error", param=field)
    for expires in ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00", -1e18):
        assert_error(http.post("/v1/consumers/sturdy/keys", json={"expires_at": expires}, headers=ADMIN),
                     400, "invalid_request_error", param="expires_at")
