"""The route preview, GET /v1/aliases/<name>/route (README#operator-console), on real gateway
processes and the fake upstream: every skip reason, a half-open breaker reported but not
claimed, and ``would_serve`` null when every entry is skipped."""
import httpx
import pytest

from tests.helpers import assert_error, chat, wait_for
from tests.server import module_gateway

ADMIN = {"Authorization": "Bearer admin-key"}
CLIENT = {"Authorization": "Bearer client-key"}
KEYS = {"MANA_LLM_API_KEY": "client-key", "MANA_LLM_ADMIN_KEY": "admin-key"}

# openai is unconfigured (no key); groq takes one call at a time; one failure opens a
# breaker for an hour (the half-open test runs a gateway of its own with a short window).
gw = module_gateway("route", OPENAI_API_KEY="", GROQ_MAX_CONCURRENT="1", BREAKER_FAILURE_THRESHOLD="1",
                    BREAKER_BACKOFF_SECONDS="3600", STREAM_IDLE_TIMEOUT="60", **KEYS)


def put(http, name, chain):
    response = http.put(f"/v1/aliases/{name}", headers=ADMIN, json={"description": "", "chain": chain})
    assert response.status_code in (200, 201), response.text


def route(http, name, headers=CLIENT):
    response = http.get(f"/v1/aliases/{name}/route", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def states(preview):
    return [(e["target"], e["state"], e["reason"]) for e in preview["entries"]]


def test_shipped_alias_and_envelopes(http):
    preview = route(http, "mana/vision")
    assert preview == {"alias": "mana/vision", "would_serve": "ollama/llava:7b", "entries": [
        {"target": "ollama/llava:7b", "state": "ready", "reason": None},
        {"target": "google/gemini-2.0-flash-exp", "state": "ready", "reason": None},
        {"target": "openrouter/openai/gpt-4o", "state": "ready", "reason": None}]}
    assert route(http, "mana%2Fvision") == preview  # the name percent-encoded
    assert route(http, "mana/vision", headers=ADMIN) == preview
    assert_error(http.get("/v1/aliases/mana/vision/route"), 401, "authentication_error")
    assert_error(http.get("/v1/aliases/mana/nope/route", headers=CLIENT), 404, "model_not_found", param="name")
    # The alias itself still resolves as before (the detail route is not shadowed).
    assert http.get("/v1/aliases/mana/vision", headers=CLIENT).json()["name"] == "mana/vision"


def test_unconfigured_disabled_and_all_skipped(http):
    put(http, "mana/skips", ["openai/gpt-4o-mini", {"target": "ollama/llama3.1:8b", "enabled": False},
                             "ollama/gemma3:12b"])
    preview = route(http, "mana/skips")
    assert states(preview) == [("openai/gpt-4o-mini", "skipped", "unconfigured"),
                               ("ollama/llama3.1:8b", "skipped", "disabled"),
                               ("ollama/gemma3:12b", "ready", None)]
    assert preview["would_serve"] == "ollama/gemma3:12b"
    # What the preview says is what a request gets.
    response = http.post("/v1/chat/completions", headers=CLIENT, json=chat("mana/skips"))
    assert response.headers["X-Mana-LLM-Resolved"] == "ollama/gemma3:12b"
    assert response.headers["X-Mana-LLM-Attempts"] == "openai/gpt-4o-mini=unconfigured, ollama/llama3.1:8b=disabled"

    put(http, "mana/none", ["openai/gpt-4o-mini", {"target": "ollama/llama3.1:8b", "enabled": False}])
    preview = route(http, "mana/none")
    assert preview["would_serve"] is None
    assert [e["state"] for e in preview["entries"]] == ["skipped", "skipped"]
    assert http.post("/v1/chat/completions", headers=CLIENT, json=chat("mana/none")).status_code == 503


def test_open_breaker_is_skipped(http, fake):
    put(http, "mana/flaky", ["ollama/llava:7b", "together/meta-llama/Llama-3-8b"])
    fake.fault("ollama", "llava:7b", status=500)
    response = http.post("/v1/chat/completions", headers=CLIENT, json=chat("mana/flaky"))
    assert response.headers["X-Mana-LLM-Attempts"] == "ollama/llava:7b=http_500"
    fake.clear()
    preview = route(http, "mana/flaky")
    assert states(preview) == [("ollama/llava:7b", "skipped", "cache-unhealthy"),
                               ("together/meta-llama/Llama-3-8b", "ready", None)]
    assert preview["would_serve"] == "together/meta-llama/Llama-3-8b"
    calls = fake.stats()
    for _ in range(3):
        route(http, "mana/flaky")
    assert fake.stats() == calls  # the preview calls no upstream
    assert http.post("/v1/health/ollama/reset", headers=ADMIN).status_code in (200, 204)
    assert route(http, "mana/flaky")["would_serve"] == "ollama/llava:7b"


def test_saturated_while_a_stream_holds_the_only_slot(gw, http, fake):
    put(http, "mana/busy", ["groq/llama-3.3-70b-versatile", "ollama/qwen2.5:7b"])
    fake.fault("groq", "llama-3.3-70b-versatile", times=1, stall_after=1)  # a stream that stays open
    with httpx.Client(base_url=gw.url, timeout=20) as other:
        with other.stream("POST", "/v1/chat/completions", headers=CLIENT,
                          json=chat("groq/llama-3.3-70b-versatile", stream=True)) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()  # keep a reference: a dropped generator closes the response
            assert next(lines).startswith("data: ")  # the first token is out: the slot is held
            preview = route(http, "mana/busy")
            assert states(preview) == [("groq/llama-3.3-70b-versatile", "skipped", "saturated"),
                                       ("ollama/qwen2.5:7b", "ready", None)]
            assert preview["would_serve"] == "ollama/qwen2.5:7b"
    # The client left: the slot is freed within a second and the preview follows.
    assert wait_for(lambda: route(http, "mana/busy")["would_serve"] == "groq/llama-3.3-70b-versatile", timeout=3)


@pytest.fixture
def short_window(make_server, fake):
    """A gateway whose breakers open on one failure for one second."""
    return make_server(env={"BREAKER_FAILURE_THRESHOLD": "1", "BREAKER_BACKOFF_SECONDS": "1", **KEYS})


def test_half_open_is_reported_not_claimed(short_window, fake):
    with httpx.Client(base_url=short_window.url, timeout=20) as http:
        fake.fault("ollama", "qwen2.5:7b", times=1, status=500)
        response = http.post("/v1/chat/completions", headers=CLIENT, json=chat("mana/fast-text"))
        assert response.headers["X-Mana-LLM-Resolved"] == "groq/llama-3.1-8b-instant"

        def first():
            return route(http, "mana/fast-text")["entries"][0]

        assert wait_for(lambda: first()["state"] == "half_open", timeout=5)
        # Asked again and again, the preview still reports the trial as available: it never claims it.
        for _ in range(3):
            preview = route(http, "mana/fast-text")
            assert preview["entries"][0] == {"target": "ollama/qwen2.5:7b", "state": "half_open", "reason": None}
            assert preview["would_serve"] == "ollama/qwen2.5:7b"
        assert http.get("/v1/health", headers=CLIENT).json()["providers"]["ollama"]["models"]["qwen2.5:7b"][
            "status"] == "half_open"
        # The next real request gets the trial (a claimed trial would have sent it to groq), and closes it.
        response = http.post("/v1/chat/completions", headers=CLIENT, json=chat("mana/fast-text"))
        assert response.headers["X-Mana-LLM-Resolved"] == "ollama/qwen2.5:7b"
        assert "X-Mana-LLM-Attempts" not in response.headers
        assert first() == {"target": "ollama/qwen2.5:7b", "state": "ready", "reason": None}
