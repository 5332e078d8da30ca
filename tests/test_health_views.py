"""/v1/health, /v1/health/<provider>/reset, /health (README#endpoints) and the breaker admin."""
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, Client

from health.models import Breaker as Row
from health.board import breakers
from manallm import background
from providers import registry
from tests.helpers import T0, FakeClock, eventually

FIELDS = {"status", "consecutive_failures", "last_error", "last_check_unix", "unhealthy_until_unix"}


@pytest.fixture
def clock():
    original = breakers.clock
    breakers.clock = clock = FakeClock()
    breakers.clear()
    yield clock
    background.stop()
    breakers.clear()
    breakers.clock = original


@pytest.fixture
def configured(settings, clock):
    settings.BREAKER_FAILURE_THRESHOLD = 2
    settings.BREAKER_BACKOFF_SECONDS = 60
    settings.MANA_LLM_API_KEYS = []
    settings.MANA_LLM_ADMIN_KEY = None
    settings.PROVIDERS = {
        "ollama": {"kind": "ollama", "base_url": "http://127.0.0.1:9", "api_key": None, "max_concurrent": None,
                   "timeout": 5},
        "openrouter": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-or-test",
                       "max_concurrent": None, "timeout": 5},
    }
    return settings


@pytest.fixture
def keys(configured):
    configured.MANA_LLM_ADMIN_KEY = "admin-key"
    configured.MANA_LLM_API_KEYS = ["client-key"]
    return configured


def trip(provider, model="", level=None):
    for _ in range(2):
        breakers.record_failure(provider, model, level or ("deployment" if model else "provider"), "connect_error")


pytestmark = pytest.mark.django_db(transaction=True)


async def test_health_shape_all_healthy(configured):
    response = await AsyncClient().get("/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert set(body["providers"]) == {"ollama", "openrouter"}  # every configured provider, no others
    ollama = body["providers"]["ollama"]
    assert ollama == {"status": "healthy", "consecutive_failures": 0, "last_error": None, "last_check_unix": None,
                      "unhealthy_until_unix": None, "in_flight": 0, "max_concurrent": None,
                      "models": {}}


async def test_health_details_and_overall_status(configured, clock):
    trip("openrouter", "anthropic/claude-3-haiku")
    breakers.record_failure("ollama", "qwen2.5:7b", "deployment", "http_503")
    registry.configured()["ollama"].in_flight = 3
    body = (await AsyncClient().get("/v1/health")).json()
    assert body["status"] == "healthy"  # deployment breakers do not change the overall status
    assert body["providers"]["ollama"]["in_flight"] == 3
    haiku = body["providers"]["openrouter"]["models"]["anthropic/claude-3-haiku"]
    assert set(haiku) == FIELDS
    assert haiku["status"] == "unhealthy" and haiku["unhealthy_until_unix"] == T0 + 60
    assert haiku["consecutive_failures"] == 2 and haiku["last_error"] == "connect_error"
    assert body["providers"]["ollama"]["models"]["qwen2.5:7b"]["status"] == "healthy"

    trip("ollama")
    body = (await AsyncClient().get("/v1/health")).json()
    assert body["status"] == "degraded"
    assert body["providers"]["ollama"]["status"] == "unhealthy"

    trip("openrouter")
    assert (await AsyncClient().get("/v1/health")).json()["status"] == "unhealthy"

    clock.advance(60)  # both half-open: neither closed nor open
    body = (await AsyncClient().get("/v1/health")).json()
    assert body["status"] == "degraded"
    assert {p["status"] for p in body["providers"].values()} == {"half_open"}


async def test_liveness(configured):
    trip("ollama")
    response = await AsyncClient().get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "degraded", "service": "manallm", "version": configured.VERSION,
                               "providers": {"ollama": "unhealthy", "openrouter": "healthy"}}


async def test_liveness_needs_no_key(keys):
    assert (await AsyncClient().get("/health")).status_code == 200


async def test_state_written_by_another_process_shows_within_a_second(configured):
    assert (await AsyncClient().get("/v1/health")).json()["status"] == "healthy"  # starts the poller
    await sync_to_async(Row.objects.create)(
        key="ollama", provider="ollama", consecutive_failures=2, last_error="probe failed: connect_error",
        last_check=T0, unhealthy_until=T0 + 60, updated_at=T0)

    async def ollama_once_unhealthy():
        entry = (await AsyncClient().get("/v1/health")).json()["providers"]["ollama"]
        return entry if entry["status"] == "unhealthy" else None

    entry = await eventually(ollama_once_unhealthy, timeout=1.0, interval=0.05)
    assert entry and entry["last_error"] == "probe failed: connect_error"
    assert breakers.claim("ollama", "qwen2.5:7b") == "cache-unhealthy"


async def test_reset_with_admin_key(keys):
    trip("openrouter")
    trip("openrouter", "anthropic/claude-3-haiku")
    trip("ollama")
    await breakers.flush()
    response = await AsyncClient().post("/v1/health/openrouter/reset", headers={"Authorization": "Bearer admin-key"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["provider"] == "openrouter" and body["status"] == "healthy" and body["in_flight"] == 0
    assert body["models"]["anthropic/claude-3-haiku"]["status"] == "healthy"
    assert breakers.status("ollama") == "unhealthy"  # other providers untouched
    rows = {r.key: r async for r in Row.objects.all()}
    assert rows["openrouter"].unhealthy_until is None
    assert rows["openrouter/anthropic/claude-3-haiku"].consecutive_failures == 0
    assert rows["ollama"].unhealthy_until is not None


async def test_reset_access(keys):
    trip("ollama")
    client = AsyncClient()
    no_key = await client.post("/v1/health/ollama/reset")
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    client_key = await client.post("/v1/health/ollama/reset", headers={"Authorization": "Bearer client-key"})
    assert client_key.status_code == 403 and client_key.json()["error"]["type"] == "permission_error"
    x_api_key = await client.post("/v1/health/ollama/reset", headers={"X-API-Key": "admin-key"})
    assert x_api_key.status_code == 200
    assert breakers.status("ollama") == "healthy"


async def test_reset_admin_key_only(configured):
    configured.MANA_LLM_ADMIN_KEY = "admin-key"  # no client keys: the API is open, management is not
    assert (await AsyncClient().post("/v1/health/ollama/reset")).status_code == 401
    assert (await AsyncClient().get("/v1/health")).status_code == 200


async def test_reset_unknown_provider_and_methods(keys):
    admin = {"Authorization": "Bearer admin-key"}
    client = AsyncClient()
    for name in ("nope", "groq"):  # unknown, and known but unconfigured
        response = await client.post(f"/v1/health/{name}/reset", headers=admin)
        assert response.status_code == 404
        assert set(response.json()["error"]) >= {"message", "type", "code", "param"}
    wrong = await client.get("/v1/health/ollama/reset", headers=admin)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert (await client.post("/v1/health", headers=admin)).status_code == 405
    assert (await client.post("/health")).status_code == 405


async def test_client_key_reads_health(keys):
    assert (await AsyncClient().get("/v1/health")).status_code == 401  # /v1 needs a client key
    response = await AsyncClient().get("/v1/health", headers={"Authorization": "Bearer client-key"})
    assert response.status_code == 200


# --- admin ---------------------------------------------------------------------------


def test_admin_lists_and_resets(configured, admin_client, clock):
    Row.objects.create(key="ollama", provider="ollama", consecutive_failures=2, last_error="connect_error",
                       last_check=T0, unhealthy_until=T0 + 60, updated_at=T0)
    Row.objects.create(key="ollama/qwen2.5:7b", provider="ollama", model="qwen2.5:7b", consecutive_failures=3,
                       last_error="http_503", last_check=T0, unhealthy_until=T0 + 60, updated_at=T0)
    page = admin_client.get("/admin/health/breaker/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "unhealthy (open)" in html and "Reset (close) selected breakers" in html
    assert "1970-01-12 13:47:40 UTC (in 60 s)" in html  # human-readable times
    assert "/admin/health/breaker/add/" not in html

    target = Row.objects.get(key="ollama/qwen2.5:7b")
    response = admin_client.post("/admin/health/breaker/", {"action": "reset_breakers",
                                                            "_selected_action": [target.pk]})
    assert response.status_code == 302
    target.refresh_from_db()
    assert (target.consecutive_failures, target.unhealthy_until) == (0, None)
    assert Row.objects.get(key="ollama").unhealthy_until is not None  # only the selected one

    detail = admin_client.get(f"/admin/health/breaker/{target.pk}/change/")
    assert detail.status_code == 200  # view-only page
    assert admin_client.post(f"/admin/health/breaker/{target.pk}/delete/").status_code == 403


# --- the reset's session rule and the reads' error envelope ------------------------------


def test_reset_by_staff_session_needs_csrf(keys, django_user_model):
    trip("ollama")
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_user("staff", password="pw", is_staff=True))
    refused = client.post("/v1/health/ollama/reset")
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
    assert breakers.status("ollama") == "unhealthy"
    token = client.get("/admin/").cookies["csrftoken"].value
    response = client.post("/v1/health/ollama/reset", headers={"x-csrftoken": token})
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "healthy" and breakers.status("ollama") == "healthy"
    # The admin key needs no token, session or not.
    assert client.post("/v1/health/ollama/reset", headers={"x-api-key": "admin-key"}).status_code == 200


def test_reset_wrong_method_names_allowed(keys):
    response = Client().get("/v1/health/ollama/reset", headers={"x-api-key": "admin-key"})
    assert response.status_code == 405 and "POST" in response["Allow"]
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/v1/health", "/health"])
async def test_reads_answer_405_and_500_in_the_envelope(configured, monkeypatch, path):
    response = await AsyncClient().delete(path)
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"
    assert response.json()["error"]["code"] == "method_not_allowed"

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(registry, "configured", broken)
    response = await AsyncClient().get(path, headers={"X-Request-ID": "req-42"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "req-42" in error["message"] and "boom" not in error["message"]


def test_admin_reset_the_database_cannot_commit_changes_nothing_and_says_so(configured, admin_client, monkeypatch):
    from django.db import OperationalError

    from health import rows as rows_module

    row = Row.objects.create(key="groq", provider="groq", consecutive_failures=2, last_error="connect_error",
                             last_check=T0, unhealthy_until=T0 + 60, updated_at=T0)
    breakers.load()
    assert breakers.status("groq") == "unhealthy"

    def unreachable(*args, **kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(rows_module, "reset_rows", unreachable)
    response = admin_client.post("/admin/health/breaker/", {"action": "reset_breakers", "_selected_action": [row.pk]},
                                 follow=True)
    assert response.status_code == 200
    assert "Nothing was reset" in response.content.decode()
    assert breakers.status("groq") == "unhealthy"  # not closed in memory either
