"""Metrics (README#metrics), JSON logs with request ids, skip reasons and secrets, seen from
outside a real gateway process.

The module's gateway runs with RETRIES=1 (so retries show in the metrics), LOG_FORMAT=json,
OLLAMA_MAX_CONCURRENT=1 (so a held stream saturates Ollama), STREAM_IDLE_TIMEOUT=1 and
the `together` provider unconfigured. Counters are process-wide, so every metric check
compares a value before and after the request it is about.
"""
import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import SECRETS, assert_error, chat, content_of, sse_events, wait_for
from tests.server import module_gateway

gw = module_gateway("metrics", RETRIES="1", LOG_FORMAT="json", BREAKER_FAILURE_THRESHOLD="1000",
                    OLLAMA_MAX_CONCURRENT="1", STREAM_IDLE_TIMEOUT="1", TOGETHER_API_KEY="", LOG_LEVEL="info")


def scrape(gw):
    response = httpx.get(f"{gw.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def samples(text):
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(text, name, **labels):
    """The sample's value (0 when absent); labels must match exactly."""
    found = [s.value for s in samples(text) if s.name == name and s.labels == labels]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


class Delta:
    """Metric values before and after a block of requests."""

    def __init__(self, gw):
        self.gw = gw
        self.before = scrape(gw)
        self.after = None

    def __call__(self, name, **labels):
        if self.after is None:
            self.after = scrape(self.gw)
        return value(self.after, name, **labels) - value(self.before, name, **labels)


# --- metrics ------------------------------------------------------------------------------


def test_fallback_request_metrics(http, gw, fake):
    fake.fault("ollama", "qwen2.5:7b", status=500)
    delta = Delta(gw)
    response = http.post("/v1/chat/completions", json=chat(), headers={"X-Request-ID": "metrics-fallback-1"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Mana-LLM-Attempts"] == "ollama/qwen2.5:7b=http_500"
    assert fake.stats()["requests"]["ollama/qwen2.5:7b"] == 2  # one retry (RETRIES=1)

    assert delta("mana_llm_llm_requests_total", provider="mana", model="fast-text", streaming="false") == 1
    assert delta("mana_llm_fallback_total", from_model="ollama/qwen2.5:7b", to_model="groq/llama-3.1-8b-instant",
                 reason="http_500") == 1
    assert delta("mana_llm_alias_resolved_total", alias="mana/fast-text", target="groq/llama-3.1-8b-instant") == 1
    assert delta("mana_llm_alias_resolved_total", alias="mana/fast-text", target="ollama/qwen2.5:7b") == 0
    assert delta("mana_llm_retries_total", provider="ollama", model="qwen2.5:7b", reason="http_500") == 1
    assert delta("mana_llm_llm_errors_total", provider="ollama", model="qwen2.5:7b", error_type="http_500") == 2
    # latency histogram on the resolved side
    assert delta("mana_llm_llm_latency_seconds_count", provider="groq", model="llama-3.1-8b-instant") == 1
    assert delta("mana_llm_llm_latency_seconds_bucket", provider="groq", model="llama-3.1-8b-instant", le="+Inf") == 1
    assert delta("mana_llm_llm_latency_seconds_sum", provider="groq", model="llama-3.1-8b-instant") > 0
    usage = response.json()["usage"]
    assert delta("mana_llm_tokens_total", provider="groq", model="llama-3.1-8b-instant",
                 type="prompt") == usage["prompt_tokens"]
    # django-prometheus's request metrics sit beside the gateway's own
    assert delta("django_http_requests_total_by_method_total", method="POST") == 1
    assert "django_http_responses_total_by_status_total" in delta.after


def test_tokens_use_split_provider_and_model_labels(http, gw, fake):
    delta = Delta(gw)
    response = http.post("/v1/chat/completions", json=chat("openrouter/anthropic/claude-3-haiku", text="a b c"))
    usage = response.json()["usage"]
    assert delta("mana_llm_llm_requests_total", provider="openrouter", model="anthropic/claude-3-haiku",
                 streaming="false") == 1
    assert delta("mana_llm_tokens_total", provider="openrouter", model="anthropic/claude-3-haiku",
                 type="prompt") == usage["prompt_tokens"] == 3
    assert delta("mana_llm_tokens_total", provider="openrouter", model="anthropic/claude-3-haiku",
                 type="completion") == usage["completion_tokens"] > 0
    assert delta("mana_llm_llm_latency_seconds_count", provider="openrouter", model="anthropic/claude-3-haiku") == 1
    assert 'provider="openrouter/anthropic"' not in delta.after


def test_stream_metrics_time_to_first_token(http, gw, fake):
    delta = Delta(gw)
    events = sse_events(http.post("/v1/chat/completions", json=chat("groq/llama-3.1-8b-instant", stream=True)))
    assert content_of(events)
    assert delta("mana_llm_llm_requests_total", provider="groq", model="llama-3.1-8b-instant", streaming="true") == 1
    assert delta("mana_llm_time_to_first_token_seconds_count", provider="groq", model="llama-3.1-8b-instant") == 1
    assert delta("mana_llm_time_to_first_token_seconds_bucket", provider="groq", model="llama-3.1-8b-instant",
                 le="+Inf") == 1
    assert delta("mana_llm_llm_latency_seconds_count", provider="groq", model="llama-3.1-8b-instant") == 1
    # the adapter asks the upstream for usage, so a stream counts its tokens too
    assert delta("mana_llm_tokens_total", provider="groq", model="llama-3.1-8b-instant", type="completion") > 0


def test_embeddings_are_counted(http, gw, fake):
    delta = Delta(gw)
    response = http.post("/v1/embeddings", json={"model": "ollama/nomic-embed-text", "input": "x"})
    assert response.status_code == 200
    assert delta("mana_llm_llm_requests_total", provider="ollama", model="nomic-embed-text", streaming="false") == 1


def test_chain_ran_out_counts_an_empty_to_model(http, gw, fake):
    for provider, model in (("ollama", "qwen2.5:7b"), ("groq", "llama-3.1-8b-instant"),
                            ("openrouter", "anthropic/claude-3-haiku")):
        fake.fault(provider, model, status=400, error_code="context_length_exceeded")
    delta = Delta(gw)
    error = assert_error(http.post("/v1/chat/completions", json=chat()), 503, "no_healthy_provider")
    assert [a["reason"] for a in error["attempts"]] == ["context_length_exceeded"] * 3
    assert delta("mana_llm_fallback_total", from_model="groq/llama-3.1-8b-instant",
                 to_model="openrouter/anthropic/claude-3-haiku", reason="context_length_exceeded") == 1
    assert delta("mana_llm_fallback_total", from_model="openrouter/anthropic/claude-3-haiku", to_model="",
                 reason="context_length_exceeded") == 1
    assert delta("mana_llm_retries_total", provider="ollama", model="qwen2.5:7b",
                 reason="context_length_exceeded") == 0  # falls over without a retry


def test_unconfigured_provider_is_skipped(http, gw, fake):
    delta = Delta(gw)
    error = assert_error(http.post("/v1/chat/completions", json=chat("together/gpt-4o-mini")), 503,
                         "no_healthy_provider")
    assert error["attempts"] == [{"model": "together/gpt-4o-mini", "reason": "unconfigured"}]
    assert delta("mana_llm_fallback_total", from_model="together/gpt-4o-mini", to_model="",
                 reason="unconfigured") == 1
    assert "together" not in http.get("/v1/health").json()["providers"]


def test_saturated_provider_is_skipped(http, gw, fake):
    fake.fault("ollama", "qwen2.5:7b", stall_after=1)
    with httpx.Client(base_url=gw.url, timeout=20) as holder:
        with holder.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as held:
            chunks = held.iter_raw()
            assert b"Hello" in next(chunks)  # Ollama's only slot is now taken
            delta = Delta(gw)
            response = http.post("/v1/chat/completions", json=chat())
            assert response.status_code == 200, response.text
            assert response.json()["model"] == "groq/llama-3.1-8b-instant"
            assert response.headers["X-Mana-LLM-Attempts"] == "ollama/qwen2.5:7b=saturated"
            assert delta("mana_llm_fallback_total", from_model="ollama/qwen2.5:7b",
                         to_model="groq/llama-3.1-8b-instant", reason="saturated") == 1
            assert fake.stats()["requests"]["ollama/qwen2.5:7b"] == 1  # skipped, not tried
    assert wait_for(lambda: http.get("/v1/health").json()["providers"]["ollama"]["in_flight"] == 0, timeout=2)
    assert http.post("/v1/chat/completions", json=chat()).json()["model"] == "ollama/qwen2.5:7b"


def test_stream_stall_after_the_first_token_ends_with_an_error_event(http, fake):
    fake.fault("groq", "llama-3.1-8b-instant", stall_after=2)
    response = http.post("/v1/chat/completions", json=chat("groq/llama-3.1-8b-instant", stream=True),
                         headers={"X-Request-ID": "stall-1"})
    events = sse_events(response)
    assert "error" in events[-1] and content_of(events[:-1])
    assert not any(choice.get("finish_reason") for event in events[:-1] for choice in event["choices"])
    assert wait_for(lambda: fake.stats()["active"] == 0, timeout=2)  # the stalled upstream was let go


# --- logs ---------------------------------------------------------------------------------


def json_lines(gw):
    """Every line the gateway logged, parsed (daphne's own access log is off, as in make run)."""
    parsed = []
    for line in gw.logs().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)  # anything else must be one JSON object per line
        assert isinstance(entry, dict) and {"time", "level", "logger", "message", "request_id"} <= set(entry), line
        parsed.append(entry)
    return parsed


def lines_for(gw, request_id):
    return [entry for entry in json_lines(gw) if entry["request_id"] == request_id]


def test_logs_are_json_and_carry_the_request_id(http, gw, fake):
    fake.fault("ollama", "qwen2.5:7b", status=500)
    response = http.post("/v1/chat/completions", json=chat(), headers={"X-Request-ID": "log-fallback-7"})
    assert response.status_code == 200
    logged = wait_for(lambda: lines_for(gw, "log-fallback-7"), timeout=3)
    assert logged, gw.logs()[-2000:]
    assert any("ollama/qwen2.5:7b" in entry["message"] for entry in logged)
    assert all(entry["level"] in ("info", "warning") for entry in logged)


def test_stream_failure_log_line_carries_the_request_id(http, gw, fake):
    fake.fault("groq", "llama-3.1-8b-instant", cut_after=2)
    events = sse_events(http.post("/v1/chat/completions", json=chat("groq/llama-3.1-8b-instant", stream=True),
                                  headers={"X-Request-ID": "log-stream-cut-8"}))
    assert "error" in events[-1]
    logged = wait_for(lambda: lines_for(gw, "log-stream-cut-8"), timeout=3)
    assert any(entry["level"] == "warning" and "groq/llama-3.1-8b-instant" in entry["message"] for entry in logged), \
        [line for line in gw.logs().splitlines() if "cut short" in line or "failed after" in line]


def test_error_response_log_line_carries_the_request_id(http, gw, fake):
    fake.fault("groq", "llama-3.1-8b-instant", error_code="invalid_api_key")
    response = http.post("/v1/chat/completions", json=chat("groq/llama-3.1-8b-instant"),
                         headers={"X-Request-ID": "log-auth-9"})
    assert_error(response, 502, "auth")
    # Django logs every 5xx answer (logger django.request); that line belongs to the request too
    assert wait_for(lambda: any(entry["logger"] == "django.request" for entry in lines_for(gw, "log-auth-9")),
                    timeout=3), [e for e in json_lines(gw) if e["logger"] == "django.request"][-3:]


def test_no_line_is_plain_text(gw):
    entries = json_lines(gw)  # raises on any line that is not one JSON object
    assert entries and all(entry["request_id"] for entry in entries)


# --- secrets (kept last: it looks at everything the module made the gateway do) -------------


def test_provider_keys_never_leak(http, gw, fake):
    # upstreams that echo our key back in their errors
    fake.fault("groq", "llama-3.1-8b-instant", status=401,
               body={"error": {"message": "Incorrect API key provided: test-groq-key"}})
    fake.fault("openrouter", "anthropic/claude-3-haiku", status=500,
               body={"error": {"message": "upstream failed for Bearer test-openrouter-key"}})
    fake.fault("google", "*", status=403, body={"error": {"code": 403, "message": "key test-google-key revoked",
                                                          "status": "PERMISSION_DENIED"}})
    bodies = [
        http.post("/v1/chat/completions", json=chat("groq/llama-3.1-8b-instant")).text,
        http.post("/v1/chat/completions", json=chat("openrouter/anthropic/claude-3-haiku")).text,
        http.post("/v1/chat/completions", json=chat("google/gemini-2.5-flash")).text,
        http.post("/v1/chat/completions", json=chat("openai/gpt-4o-mini", stream=True)).text,
        http.post("/v1/embeddings", json={"model": "openai/text-embedding-3-small", "input": "x"}).text,
        http.get("/v1/models").text,
        http.get("/v1/health").text,
        http.get("/health").text,
        scrape(gw),
    ]
    assert "test-openrouter-key" not in http.get("/v1/health").text  # breaker last_error is scrubbed
    for secret in SECRETS:
        for body in bodies:
            assert secret not in body
        assert secret not in gw.logs()
