"""Issue 2: the alias management API (README#endpoints) and its auth matrix (README#configuration)."""
import pytest
from django.test import Client

from routing.models import Alias, DefaultAliasProtected
from routing.table import aliases
from routing.validators import validate_alias

pytestmark = pytest.mark.django_db

BODY = {"description": "test alias", "chain": ["ollama/qwen2.5:7b", "groq/llama-3.1-8b-instant"]}


def put(client, name, body, **headers):
    return client.put(f"/v1/aliases/{name}", body, content_type="application/json", headers=headers)


def make(name, chain, *, description="", default=False):
    alias = Alias.objects.create(name=name, description=description, is_default=default)
    for i, target in enumerate(chain):
        alias.entries.create(position=i, target=target)
    return alias


@pytest.fixture
def keys(settings):
    settings.MANA_LLM_API_KEYS = ["client-key"]
    settings.MANA_LLM_ADMIN_KEY = "admin-key"
    return settings


def test_list_shape_sorted(client):
    make("mana/zeta", ["ollama/z"], description="last")
    make("mana/alpha", ["groq/a", "openrouter/anthropic/claude-3-haiku"], description="first", default=True)
    make("mana/mid", ["openai/gpt-4o-mini"])
    response = client.get("/v1/aliases")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/json")
    assert response.json() == {"default": "mana/alpha", "aliases": [
        {"name": "mana/alpha", "description": "first", "chain": ["groq/a", "openrouter/anthropic/claude-3-haiku"]},
        {"name": "mana/mid", "description": "", "chain": ["openai/gpt-4o-mini"]},
        {"name": "mana/zeta", "description": "last", "chain": ["ollama/z"]},
    ]}


def test_list_empty(client):
    assert client.get("/v1/aliases").json() == {"default": None, "aliases": []}


@pytest.mark.parametrize("path_name", ["mana/x", "mana%2Fx", "mana%2fx"])
def test_put_get_delete_by_name_with_slash(client, path_name):
    response = put(client, path_name, BODY)
    assert response.status_code == 201, response.content
    assert response.json() == {"name": "mana/x", **BODY}
    assert client.get(f"/v1/aliases/{path_name}").json() == {"name": "mana/x", **BODY}

    replaced = {"description": "replaced", "chain": ["openrouter/anthropic/claude-3-haiku"]}
    response = put(client, path_name, replaced)
    assert response.status_code == 200
    assert response.json() == {"name": "mana/x", **replaced}
    assert client.get("/v1/aliases/mana/x").json()["chain"] == ["openrouter/anthropic/claude-3-haiku"]
    assert Alias.objects.get(name="mana/x").entries.count() == 1

    response = client.delete(f"/v1/aliases/{path_name}")
    assert response.status_code == 204 and response.content == b""
    for path in (f"/v1/aliases/{path_name}", "/v1/aliases/mana/x"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "model_not_found"
    response = client.delete(f"/v1/aliases/{path_name}")
    assert response.status_code == 404 and response.json()["error"]["type"] == "model_not_found"
    assert not Alias.objects.exists()


def test_put_with_options_and_description_optional(client):
    response = put(client, "mana/opts", {"chain": [
        {"target": "groq/llama-3.1-8b-instant", "first_token_timeout": 5},
        {"target": "ollama/qwen2.5:7b", "enabled": False}]})
    assert response.status_code == 201
    # Entries with options read back as mappings, as in the aliases file (README#aliases-file).
    assert response.json() == {"name": "mana/opts", "description": "", "chain": [
        {"target": "groq/llama-3.1-8b-instant", "first_token_timeout": 5},
        {"target": "ollama/qwen2.5:7b", "enabled": False}]}
    entries = list(Alias.objects.get(name="mana/opts").entries.values_list("target", "enabled", "first_token_timeout"))
    assert entries == [("groq/llama-3.1-8b-instant", True, 5.0), ("ollama/qwen2.5:7b", False, None)]


def test_put_and_get_stream_continuation_and_prefill(client):
    body = {"description": "continues", "stream_continuation": True, "chain": [
        "ollama/qwen2.5:7b", {"target": "groq/llama-3.1-8b-instant", "prefill": True}]}
    response = put(client, "mana/cont", body)
    assert response.status_code == 201, response.content
    assert response.json() == {"name": "mana/cont", **body}
    assert client.get("/v1/aliases/mana/cont").json() == {"name": "mana/cont", **body}
    alias = Alias.objects.get(name="mana/cont")
    assert alias.stream_continuation and [e.prefill for e in alias.entries.all()] == [False, True]
    # What GET answers (less its name) can be PUT back; without the options the documented shape stays.
    read = client.get("/v1/aliases/mana/cont").json()
    del read["name"]
    assert put(client, "mana/cont", read).json() == {"name": "mana/cont", **body}
    plain = {"description": "", "chain": ["ollama/qwen2.5:7b"]}
    assert put(client, "mana/cont", {**plain, "stream_continuation": False}).json() == {"name": "mana/cont", **plain}
    response = put(client, "mana/cont", {**plain, "stream_continuation": "true"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "stream_continuation"


def test_put_default_flag_moves_default(client):
    make("mana/a", ["ollama/a"], default=True)
    response = put(client, "mana/b", {**BODY, "default": True})
    assert response.status_code == 201
    assert client.get("/v1/aliases").json()["default"] == "mana/b"
    # The default cannot be deleted while it is the default.
    response = client.delete("/v1/aliases/mana/b")
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"
    assert client.delete("/v1/aliases/mana/a").status_code == 204


def test_validation_400_names_field(client):
    response = put(client, "mana/x", {"chain": ["ollama/ok", {"target": "groq/m", "enabled": "yes"}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "chain[1].enabled"
    assert "'mana/x'" in error["message"] and "chain[1].enabled" in error["message"]
    assert "true or false" in error["message"]
    response = put(client, "mana/a/b", BODY)
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"
    response = put(client, "mana/x", {"chain": []})
    assert response.status_code == 400 and response.json()["error"]["param"] == "chain"
    assert not Alias.objects.exists()


def test_unknown_method(client):
    response = client.post("/v1/aliases/mana/x", BODY, content_type="application/json")
    assert response.status_code == 405


# --- auth matrix ------------------------------------------------------------------------


def test_write_without_key_401(client, keys):
    for response in (put(client, "mana/x", BODY), client.delete("/v1/aliases/mana/x")):
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    make("mana/x", ["ollama/a"])
    # A wrong key is no key.
    response = put(client, "mana/x", BODY, authorization="Bearer nope")
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert Alias.objects.get(name="mana/x").specs()[0].target == "ollama/a"


def test_write_with_client_key_403(client, keys):
    make("mana/x", ["ollama/a"])
    for headers in ({"authorization": "Bearer client-key"}, {"x-api-key": "client-key"}):
        response = put(client, "mana/x", BODY, **headers)
        assert response.status_code == 403, response.content
        assert response.json()["error"]["type"] == "permission_error"
        assert client.delete("/v1/aliases/mana/x", headers=headers).status_code == 403
    assert Alias.objects.get(name="mana/x").specs()[0].target == "ollama/a"


@pytest.mark.parametrize("headers", [{"authorization": "Bearer admin-key"}, {"x-api-key": "admin-key"}])
def test_write_with_admin_key(client, keys, headers):
    assert put(client, "mana/x", BODY, **headers).status_code == 201
    assert put(client, "mana/x", BODY, **headers).status_code == 200
    assert client.delete("/v1/aliases/mana/x", headers=headers).status_code == 204


def test_admin_key_only_no_client_keys(client, settings):
    settings.MANA_LLM_API_KEYS = []
    settings.MANA_LLM_ADMIN_KEY = "admin-key"
    # Reads are open (no client keys configured); writes still need the admin key.
    assert client.get("/v1/aliases").status_code == 200
    response = put(client, "mana/x", BODY)
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert put(client, "mana/x", BODY, authorization="Bearer admin-key").status_code == 201


def test_no_keys_is_open(client, settings):
    settings.MANA_LLM_API_KEYS = []
    settings.MANA_LLM_ADMIN_KEY = None
    assert put(client, "mana/x", BODY).status_code == 201
    assert client.delete("/v1/aliases/mana/x").status_code == 204


def test_reads(client, keys):
    make("mana/x", ["ollama/a"], default=True)
    for path in ("/v1/aliases", "/v1/aliases/mana/x", "/v1/aliases/mana%2Fx"):
        response = client.get(path)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        assert client.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401
        for headers in ({"authorization": "Bearer client-key"}, {"x-api-key": "client-key"},
                        {"authorization": "Bearer admin-key"}, {"x-api-key": "admin-key"}):
            assert client.get(path, headers=headers).status_code == 200, (path, headers)


def test_several_client_keys(client, settings):
    settings.MANA_LLM_API_KEYS = ["one", "two"]
    settings.MANA_LLM_ADMIN_KEY = "admin-key"
    assert client.get("/v1/aliases", headers={"authorization": "Bearer two"}).status_code == 200
    assert client.get("/v1/aliases", headers={"x-api-key": "one"}).status_code == 200
    assert put(client, "mana/x", BODY, authorization="Bearer two").status_code == 403


def test_cors_preflight_needs_no_key(client, keys):
    response = client.options("/v1/aliases/mana/x", headers={
        "origin": "http://localhost:5173", "access-control-request-method": "PUT",
        "access-control-request-headers": "authorization, content-type"})
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "http://localhost:5173"


# --- staff sessions and CSRF ------------------------------------------------------------


@pytest.fixture
def staff_client(django_user_model):
    client = Client(enforce_csrf_checks=True)
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    return client


def csrf_token(client):
    response = client.get("/admin/")
    assert response.status_code == 200
    return response.cookies["csrftoken"].value


@pytest.mark.parametrize("configured", [True, False])
def test_staff_session_write_needs_csrf(staff_client, settings, configured):
    settings.MANA_LLM_API_KEYS = ["client-key"] if configured else []
    settings.MANA_LLM_ADMIN_KEY = "admin-key" if configured else None
    # No CSRF token: refused, nothing written.
    response = put(staff_client, "mana/x", BODY)
    assert response.status_code == 403, response.content
    assert "CSRF" in response.json()["error"]["message"]
    assert not Alias.objects.exists()
    response = staff_client.delete("/v1/aliases/mana/x")
    assert response.status_code == 403

    token = csrf_token(staff_client)
    response = put(staff_client, "mana/x", BODY, x_csrftoken=token)
    assert response.status_code == 201, response.content
    # The session reads without a key too.
    assert staff_client.get("/v1/aliases/mana/x").status_code == 200
    assert staff_client.delete("/v1/aliases/mana/x", headers={"x-csrftoken": token}).status_code == 204


def test_admin_key_needs_no_csrf(keys):
    client = Client(enforce_csrf_checks=True)
    assert put(client, "mana/x", BODY, authorization="Bearer admin-key").status_code == 201
    assert client.delete("/v1/aliases/mana/x", headers={"x-api-key": "admin-key"}).status_code == 204


def test_non_staff_session_cannot_write(django_user_model, keys):
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_user("joe", password="pw"))
    response = put(client, "mana/x", BODY)
    assert response.status_code == 401
    assert not Alias.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_api_write_is_served_by_this_process(client):
    aliases.load()
    assert put(client, "mana/x", BODY).status_code == 201
    assert [e.target for e in aliases.resolve("mana/x")[1]] == BODY["chain"]
    assert put(client, "mana/x", {"chain": ["openai/gpt-4o-mini"]}).status_code == 200
    assert [e.target for e in aliases.resolve("mana/x")[1]] == ["openai/gpt-4o-mini"]
    assert client.delete("/v1/aliases/mana/x").status_code == 204
    assert "mana/x" not in aliases.snapshot.aliases


@pytest.mark.django_db
def test_put_reads_json_whatever_the_content_type(client):
    # curl -X PUT -d '{...}' sends application/x-www-form-urlencoded.
    body = '{"description": "from curl", "chain": ["groq/llama-3.1-8b-instant"]}'
    response = client.put("/v1/aliases/mana/curl", body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 201, response.content
    assert response.json()["chain"] == ["groq/llama-3.1-8b-instant"]
    response = client.put("/v1/aliases/mana/curl", "{not json", content_type="text/plain")
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", ["null", "[]", '"text"'])
def test_put_body_must_be_an_object(client, body):
    response = client.put("/v1/aliases/mana/x", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "body" and not Alias.objects.exists()


def test_the_model_layer_guards_the_default_for_every_writer():
    first, created = Alias.objects.put(validate_alias("mana/a", BODY), default=True)
    assert created and first.is_default
    second, created = Alias.objects.put(validate_alias("mana/b", BODY), default=True)
    assert created and list(Alias.objects.filter(is_default=True).values_list("name", flat=True)) == ["mana/b"]
    _, created = Alias.objects.put(validate_alias("mana/b", {"chain": ["ollama/x"]}))
    assert not created and Alias.objects.get(name="mana/b").is_default  # default=False keeps the mark
    with pytest.raises(DefaultAliasProtected, match="'mana/b' is the default alias"):
        second.delete()
    with pytest.raises(DefaultAliasProtected):
        Alias.objects.all().check_deletable()
    first.delete()  # the database says it is no longer the default, whatever the instance remembers
    assert list(Alias.objects.values_list("name", flat=True)) == ["mana/b"]


def test_a_line_break_in_the_name_is_a_400_and_never_reaches_the_log_raw(client, caplog):
    # %0A is decoded by the server: the name must meet the validator (a 400 naming it),
    # not a 404, and the access line must not be split into a forged second line.
    with caplog.at_level("INFO", logger="manallm.access"):
        response = put(client, "mana/x%0Aforged", BODY)
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"
    lines = [record.getMessage() for record in caplog.records if record.name == "manallm.access"]
    assert lines and all("\n" not in line for line in lines) and "mana/x\\nforged" in lines[0]
