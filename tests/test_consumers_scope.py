"""Issue 11: a consumer's scope (README#consumers) on a real gateway — exact names and
prefixes ending in '*', checked against the requested name before anything is routed:
403 permission_denied naming the model, nothing sent upstream."""
import httpx
import openai
import pytest

from tests.helpers import assert_error, assert_sdk_error, chat, create_consumer, issue_key, sdk
from tests.server import module_gateway

ADMIN_KEY = "admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

gw = module_gateway("consumer-scope", MANA_LLM_ADMIN_KEY=ADMIN_KEY)


def key_for(gateway, name, patterns):
    create_consumer(gateway, ADMIN_KEY, name, allowed_models=patterns)
    return issue_key(gateway, ADMIN_KEY, name)["key"]


def post(gateway, key, path, body):
    return httpx.post(f"{gateway.url}/v1/{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_exact_names_and_prefixes(gw, fake):
    key = key_for(gw, "scoped", ["mana/fast-text", "ollama/*"])
    client = sdk(gw, api_key=key)
    for model in ("mana/fast-text", "ollama/qwen2.5:7b", "qwen2.5:7b"):  # a bare name is ollama/<name>
        raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert raw.http_response.status_code == 200, model
    # No model: the default alias (mana/fast-text), which the scope allows.
    assert post(gw, key, "chat/completions", chat(model=None)).status_code == 200

    before = fake.stats()["requests"]
    for model in ("mana/long-form", "groq/llama-3.1-8b-instant", "mana/fast-text-2", "ollamax/qwen"):
        with pytest.raises(openai.PermissionDeniedError) as excinfo:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        error = assert_sdk_error(excinfo, openai.PermissionDeniedError, 403, "permission_denied", param="model")
        assert model in error.message
        assert "ollama/*" not in error.message and "scoped" not in error.message
    # A stream and an embeddings request are refused the same way, as a plain JSON 403.
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="mana/long-form", messages=[{"role": "user", "content": "hi"}],
                                       stream=True)
    assert_error(post(gw, key, "embeddings", {"model": "openai/text-embedding-3-small", "input": "x"}),
                 403, "permission_denied", param="model")
    assert fake.stats()["requests"] == before  # nothing was sent upstream


def test_alias_prefix_and_empty_scope(gw, fake):
    aliases_only = key_for(gw, "aliases-only", ["mana/*"])
    assert post(gw, aliases_only, "chat/completions", chat("mana/long-form")).status_code == 200
    assert post(gw, aliases_only, "embeddings", {"model": "mana/fast-text", "input": "x"}).status_code == 200
    assert_error(post(gw, aliases_only, "chat/completions", chat("ollama/qwen2.5:7b")), 403, "permission_denied")

    everything = key_for(gw, "everything", [])
    for model in ("mana/long-form", "groq/llama-3.1-8b-instant", "qwen2.5:7b"):
        assert post(gw, everything, "chat/completions", chat(model)).status_code == 200, model

    # The built-in consumers have no scope.
    assert post(gw, ADMIN_KEY, "chat/completions", chat("groq/llama-3.1-8b-instant")).status_code == 200


def test_scope_change_applies_at_once(gw, fake):
    key = key_for(gw, "narrowed", [])
    assert post(gw, key, "chat/completions", chat("mana/long-form")).status_code == 200
    response = httpx.patch(f"{gw.url}/v1/consumers/narrowed", json={"allowed_models": ["mana/long-form"]},
                           headers=ADMIN, timeout=10)
    assert response.status_code == 200 and response.json()["allowed_models"] == ["mana/long-form"]
    assert post(gw, key, "chat/completions", chat("mana/long-form")).status_code == 200
    # The default alias is mana/fast-text: outside the scope now, and named in the refusal.
    error = assert_error(post(gw, key, "chat/completions", chat(model=None)), 403, "permission_denied")
    assert "mana/fast-text" in error["message"]
    assert httpx.patch(f"{gw.url}/v1/consumers/narrowed", json={"allowed_models": []}, headers=ADMIN).status_code == 200
    assert post(gw, key, "chat/completions", chat("groq/llama-3.1-8b-instant")).status_code == 200
