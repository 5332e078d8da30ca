"""Client keys, the admin key and CORS (README#configuration, README#endpoints) against a real gateway process
started with MANA_LLM_API_KEY="k1,k2" and MANA_LLM_ADMIN_KEY set."""
import openai
import pytest

from tests.helpers import assert_error, assert_sdk_error, chat, sdk, user_messages
from tests.server import module_gateway

CLIENT_KEYS = ("k1", "k2")
ADMIN_KEY = "admin-key-0123"
ORIGIN = "http://localhost:5173"

gw = module_gateway("auth", MANA_LLM_API_KEY=",".join(CLIENT_KEYS), MANA_LLM_ADMIN_KEY=ADMIN_KEY,
                    CORS_ORIGINS=f"{ORIGIN},https://app.example.com")


def assert_unauthorized(response):
    error = assert_error(response, 401, "authentication_error")
    for key in (*CLIENT_KEYS, ADMIN_KEY):
        assert f"'{key}'" not in response.text and f" {key}" not in response.text
    return error


V1_CALLS = [
    ("POST", "/v1/chat/completions", chat()),
    ("POST", "/v1/chat/completions", chat(stream=True)),
    ("POST", "/v1/embeddings", {"model": "ollama/nomic-embed-text", "input": "x"}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/mana/fast-text", None),
    ("GET", "/v1/aliases", None),
    ("GET", "/v1/aliases/mana/fast-text", None),
    ("GET", "/v1/health", None),
    ("GET", "/v1/nope", None),
]


@pytest.mark.parametrize("method, path, body", V1_CALLS)
def test_v1_needs_a_key(http, fake, method, path, body):
    assert_unauthorized(http.request(method, path, json=body))
    assert_unauthorized(http.request(method, path, json=body, headers={"Authorization": "Bearer wrong"}))
    assert_unauthorized(http.request(method, path, json=body, headers={"X-API-Key": "k3"}))
    assert fake.stats()["requests"] == {}


@pytest.mark.parametrize("headers", [
    {"Authorization": "Basic k1"}, {"Authorization": "Bearer"}, {"Authorization": "Bearer k1,k2"},
    {"Authorization": "k1"}, {"X-API-Key": ""}, {"Authorization": "Bearer K1"},
])
def test_malformed_or_near_miss_keys_are_refused(http, fake, headers):
    assert_unauthorized(http.post("/v1/chat/completions", json=chat(), headers=headers))


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}, {"Authorization": "bearer k2"},
    {"X-API-Key": "k1"}, {"X-API-Key": "k2"}, {"Authorization": f"Bearer {ADMIN_KEY}"}, {"X-API-Key": ADMIN_KEY},
])
def test_client_and_admin_keys_pass(http, fake, headers):
    response = http.post("/v1/chat/completions", json=chat(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "ollama/qwen2.5:7b"
    assert http.get("/v1/models", headers=headers).status_code == 200


def test_sdk_with_keys(gw, fake):
    with sdk(gw, api_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError) as excinfo:
            client.chat.completions.create(model="mana/fast-text", messages=user_messages())
        assert_sdk_error(excinfo, openai.AuthenticationError, 401, "authentication_error")
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    for key in ("k2", ADMIN_KEY):
        with sdk(gw, api_key=key) as client:
            assert client.chat.completions.create(model="mana/fast-text", messages=user_messages()).model == "ollama/qwen2.5:7b"
            assert "mana/fast-text" in {model.id for model in client.models.list()}
            stream = client.chat.completions.create(model="mana/fast-text", messages=user_messages(), stream=True)
            assert {chunk.model for chunk in stream} == {"ollama/qwen2.5:7b"}


def test_health_and_metrics_stay_open(http, fake):
    health = http.get("/health")
    assert health.status_code == 200
    assert health.json()["service"] == "manallm" and health.json()["status"] == "healthy"
    assert http.get("/metrics").status_code == 200


def test_cors_preflight_needs_no_key(http, fake):
    response = http.options("/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-request-id"})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-api-key", "x-request-id"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    # the second allowed origin too
    other = http.options("/v1/embeddings", headers={"Origin": "https://app.example.com",
                                                    "Access-Control-Request-Method": "POST"})
    assert other.headers["access-control-allow-origin"] == "https://app.example.com"


def test_cors_unknown_origin_gets_no_allow_header(http, fake):
    response = http.options("/v1/chat/completions", headers={
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in response.headers


def test_a_request_without_origin_varies_on_it_and_gets_no_cors_headers(http, fake):
    """What a shared cache in front must know: the answer depends on Origin, even when the
    request (an SDK, a server) sent none."""
    response = http.post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer k1"})
    assert response.status_code == 200
    assert "origin" in {v.strip().lower() for v in response.headers["vary"].split(",")}
    assert not any(name.startswith("access-control-") for name in response.headers)


def test_cors_actual_request_exposes_the_gateway_headers(http, fake):
    fake.fault("ollama", "qwen2.5:7b", status=500)
    response = http.post("/v1/chat/completions", json=chat(),
                         headers={"Origin": ORIGIN, "Authorization": "Bearer k1"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-mana-llm-resolved", "x-mana-llm-attempts"} <= exposed
    # a refused request still carries the CORS header, so a browser can read the 401
    refused = http.post("/v1/chat/completions", json=chat(), headers={"Origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN


def test_management_writes_need_the_admin_key(http, fake):
    alias = {"description": "auth test", "chain": ["groq/llama-3.1-8b-instant"]}
    assert_unauthorized(http.put("/v1/aliases/mana/auth-test", json=alias))
    forbidden = http.put("/v1/aliases/mana/auth-test", json=alias, headers={"Authorization": "Bearer k1"})
    assert_error(forbidden, 403, "permission_error")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert http.put("/v1/aliases/mana/auth-test", json=alias, headers=admin).status_code == 201
    try:
        served = http.post("/v1/chat/completions", json=chat("mana/auth-test"), headers={"X-API-Key": "k2"})
        assert served.json()["model"] == "groq/llama-3.1-8b-instant"
        assert_error(http.delete("/v1/aliases/mana/auth-test", headers={"X-API-Key": "k2"}), 403, "permission_error")
    finally:
        assert http.delete("/v1/aliases/mana/auth-test", headers=admin).status_code == 204
