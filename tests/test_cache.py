"""The response cache in one process (README#response-cache): a real gateway (daphne) with
the in-process LRU, the fake upstream counting the calls that reach it, and the official
`openai` SDK.

Every test asks its own question (its name is in the prompt), so the module's one
gateway and its cache serve them all without one test's entries reaching another. The
parts without a server are in tests/test_cache_units.py, Redis in tests/test_cache_redis.py.
"""

import httpx
import openai
import pytest
import yaml

from routing.cache_backends import ENTRY_OVERHEAD
from tests.helpers import assert_error, chat, content_of, metric_samples, sdk, sse_events, wait_for
from tests.server import gateway_server

QWEN, GROQ, EMBED = "ollama/qwen2.5:7b", "groq/llama-3.1-8b-instant", "ollama/nomic-embed-text"
SOLO = "ollama/llama3.1:8b"
ADMIN_KEY = "cache-test-admin-key"
ALIASES = f"""
aliases:
  mana/cached:
    description: answers cached for five minutes
    cache_ttl: 300
    chain: [{QWEN}, {GROQ}]
  mana/solo:
    cache_ttl: 300
    chain: [{SOLO}]
  mana/cloud:
    cache_ttl: 300
    chain: [{GROQ}]
  mana/plain:
    chain: [{QWEN}]
  mana/embed:
    cache_ttl: 300
    chain: [{EMBED}]
default: mana/cached
"""
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "weather",
                                                 "parameters": {"type": "object",
                                                                "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def gw(fake_upstream, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cache")
    (workdir / "aliases.yaml").write_text(ALIASES)
    server = gateway_server(workdir, fake_upstream.url, {
        "ALIASES_FILE": str(workdir / "aliases.yaml"), "RETRIES": "0", "BREAKER_FAILURE_THRESHOLD": "1000",
        "STREAM_IDLE_TIMEOUT": "1", "MANA_LLM_ADMIN_KEY": ADMIN_KEY}).prepare().start()
    yield server
    server.stop()


def calls(fake, target=QWEN):
    return fake.stats()["requests"].get(target, 0)


def ask(http, text, model="mana/cached", headers=None, **extra):
    return http.post("/v1/chat/completions", json=chat(model, text, **extra), headers=headers or {})


def cache_counts(gw, alias):
    return {labels[1]: value for labels, value in metric_samples(gw.url, "mana_llm_cache_requests_total").items()
            if labels[0] == alias}


# --- hit, miss, Cache-Control ----------------------------------------------------------------


def test_the_second_identical_request_is_answered_from_the_cache(gw, http, fake):
    before = cache_counts(gw, "mana/cached")
    first = ask(http, "test_second_identical")
    second = ask(http, "test_second_identical")
    assert first.status_code == second.status_code == 200
    assert calls(fake) == 1  # the upstream saw one call for two requests
    assert first.headers["X-Mana-LLM-Cache"] == "miss" and second.headers["X-Mana-LLM-Cache"] == "hit"
    assert second.headers["X-Mana-LLM-Resolved"] == QWEN
    assert 0 <= int(second.headers["Age"]) < 60
    assert "Age" not in first.headers
    assert second.json() == first.json()
    after = cache_counts(gw, "mana/cached")
    assert after.get("miss", 0) - before.get("miss", 0) == 1 and after.get("hit", 0) - before.get("hit", 0) == 1


def test_fields_that_do_not_change_the_answer_share_an_entry(gw, http, fake):
    ask(http, "test_fields_ignored", user="alice", metadata={"trace": "1"})
    again = http.post("/v1/chat/completions", json={"messages": chat(None, "test_fields_ignored")["messages"],
                                                     "user": "bob"})  # no model: the default alias
    assert again.headers["X-Mana-LLM-Cache"] == "hit"
    other = ask(http, "test_fields_ignored", temperature=0.5)  # a field that changes the answer
    assert other.headers["X-Mana-LLM-Cache"] == "miss"
    assert calls(fake) == 2


def test_no_cache_skips_the_lookup_and_stores_the_fresh_answer(gw, http, fake):
    ask(http, "test_no_cache")
    fake.fault("ollama", "qwen2.5:7b", text="a fresher answer")
    fresh = ask(http, "test_no_cache", headers={"Cache-Control": "no-cache"})
    assert fresh.headers["X-Mana-LLM-Cache"] == "miss"
    assert fresh.json()["choices"][0]["message"]["content"] == "a fresher answer"
    hit = ask(http, "test_no_cache")
    assert hit.headers["X-Mana-LLM-Cache"] == "hit"
    assert hit.json()["choices"][0]["message"]["content"] == "a fresher answer"
    assert calls(fake) == 2


def test_no_store_neither_reads_nor_writes(gw, http, fake):
    before = cache_counts(gw, "mana/cached")
    assert ask(http, "test_no_store", headers={"Cache-Control": "no-store"}).headers["X-Mana-LLM-Cache"] == "miss"
    assert ask(http, "test_no_store").headers["X-Mana-LLM-Cache"] == "miss"  # nothing was stored
    stored = ask(http, "test_no_store", headers={"Cache-Control": "max-age=0, No-Store"})
    assert stored.headers["X-Mana-LLM-Cache"] == "miss"  # an entry exists now, but no-store does not read it
    assert calls(fake) == 3
    after = cache_counts(gw, "mana/cached")
    assert after.get("bypass", 0) - before.get("bypass", 0) == 2


def test_direct_provider_requests_and_aliases_without_ttl_are_never_cached(gw, http, fake):
    for model in (QWEN, "mana/plain", QWEN, "mana/plain"):
        response = ask(http, "test_direct", model=model)
        assert response.status_code == 200 and "X-Mana-LLM-Cache" not in response.headers
    assert calls(fake) == 4


def test_two_consumers_never_share_an_entry(gw, http, fake):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert ask(http, "test_consumers").headers["X-Mana-LLM-Cache"] == "miss"  # consumer anonymous
    assert ask(http, "test_consumers", headers=admin).headers["X-Mana-LLM-Cache"] == "miss"  # consumer admin
    assert ask(http, "test_consumers", headers=admin).headers["X-Mana-LLM-Cache"] == "hit"
    assert ask(http, "test_consumers").headers["X-Mana-LLM-Cache"] == "hit"
    assert calls(fake) == 2


# --- plain and streamed share one answer ------------------------------------------------------


def test_a_plain_answer_is_replayed_to_a_streamed_request(gw, http, fake):
    plain = ask(http, "test_plain_then_stream").json()
    streamed = ask(http, "test_plain_then_stream", stream=True)
    assert streamed.headers["X-Mana-LLM-Cache"] == "hit" and streamed.headers["X-Mana-LLM-Resolved"] == QWEN
    events = sse_events(streamed)
    assert content_of(events) == plain["choices"][0]["message"]["content"]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(event["model"] == QWEN and event["object"] == "chat.completion.chunk" for event in events)
    assert not any(event.get("usage") for event in events)  # not asked for
    with_usage = sse_events(ask(http, "test_plain_then_stream", stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"] == plain["usage"]
    assert calls(fake) == 1


def test_a_completed_stream_is_stored_and_answers_a_plain_request(gw, http, fake):
    streamed = ask(http, "test_stream_then_plain", stream=True)
    assert streamed.headers["X-Mana-LLM-Cache"] == "miss"
    text = content_of(sse_events(streamed))
    plain = ask(http, "test_stream_then_plain")
    assert plain.headers["X-Mana-LLM-Cache"] == "hit"
    answer = plain.json()
    assert answer["object"] == "chat.completion" and answer["model"] == QWEN
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] > 0  # the stream's usage, kept though the client did not ask
    assert calls(fake) == 1


def test_the_openai_sdk_reads_a_streamed_hit_with_tool_calls(gw, fake):
    client = sdk(gw)
    messages = [{"role": "user", "content": "test_sdk what is the weather in Paris?"}]

    def stream():
        raw = client.chat.completions.with_raw_response.create(
            model="mana/cached", messages=messages, tools=[WEATHER_TOOL], stream=True,
            stream_options={"include_usage": True})
        chunks = list(raw.parse())
        calls_seen = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
        name = "".join(call.function.name or "" for call in calls_seen)
        arguments = "".join(call.function.arguments or "" for call in calls_seen)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        return raw.headers["X-Mana-LLM-Cache"], (name, arguments, finish, chunks[-1].usage.total_tokens)

    first, answer = stream()
    upstream = calls(fake)  # the chat call (and the adapter's capability check, /api/show)
    again, replayed = stream()
    assert (first, again) == ("miss", "hit")
    assert replayed == answer and answer[0] == "get_weather" and answer[2] == ["tool_calls"]
    raw = client.chat.completions.with_raw_response.create(model="mana/cached", messages=messages,
                                                           tools=[WEATHER_TOOL])
    assert raw.headers["X-Mana-LLM-Cache"] == "hit"
    assert raw.parse().choices[0].message.tool_calls[0].function.name == "get_weather"
    assert raw.parse().choices[0].message.tool_calls[0].function.arguments == answer[1]
    assert calls(fake) == upstream


# --- never stored: failures and refusals -----------------------------------------------------


@pytest.mark.parametrize("fault", [{"cut_after": 2}, {"error_event_after": 2}, {"stall_after": 2}],
                         ids=["cut", "error-event", "stall"])
def test_a_stream_that_failed_after_its_first_token_is_not_stored(gw, http, fake, fault):
    text = f"test_failed_stream {sorted(fault)}"
    fake.fault("ollama", "qwen2.5:7b", times=1, **fault)
    events = sse_events(ask(http, text, stream=True))
    assert "error" in events[-1]
    retried = ask(http, text, stream=True)
    assert retried.headers["X-Mana-LLM-Cache"] == "miss"  # the cut answer was not kept
    assert "error" not in sse_events(retried)[-1]
    assert calls(fake) == 2
    assert ask(http, text).headers["X-Mana-LLM-Cache"] == "hit"  # the complete one was


def test_a_stream_the_client_left_is_not_stored(gw, fake):
    fake.fault("ollama", "qwen2.5:7b", times=1, chunk_delay=0.3)
    with httpx.Client(base_url=gw.url, timeout=20) as client:
        with client.stream("POST", "/v1/chat/completions",
                           json=chat("mana/cached", "test_client_left", stream=True)) as response:
            assert response.headers["X-Mana-LLM-Cache"] == "miss"
            next(response.iter_lines())  # the first event, then the client leaves
    assert wait_for(lambda: fake.stats()["active"] == 0, timeout=10)  # the upstream was cancelled
    with httpx.Client(base_url=gw.url, timeout=20) as client:
        assert ask(client, "test_client_left").headers["X-Mana-LLM-Cache"] == "miss"
    assert calls(fake) == 2


def test_errors_and_refusals_are_not_stored(gw, http, fake):
    fake.fault("ollama", "llama3.1:8b", times=1, status=500)
    assert_error(ask(http, "test_errors", model="mana/solo"), 503, "no_healthy_provider")
    assert ask(http, "test_errors", model="mana/solo").headers["X-Mana-LLM-Cache"] == "miss"
    assert calls(fake, SOLO) == 2
    fake.fault("groq", "llama-3.1-8b-instant", times=1, finish_reason="content_filter")
    refused = ask(http, "test_refusal", model="mana/cloud")
    assert refused.json()["choices"][0]["finish_reason"] == "content_filter"
    assert ask(http, "test_refusal", model="mana/cloud").headers["X-Mana-LLM-Cache"] == "miss"
    assert calls(fake, GROQ) == 2


# --- embeddings ------------------------------------------------------------------------------


def test_embeddings_are_cached_per_encoding(gw, http, fake):
    def embed(encoding):
        return http.post("/v1/embeddings", json={"model": "mana/embed", "input": ["test_embeddings"],
                                                 "encoding_format": encoding})

    floats, floats_again = embed("float"), embed("float")
    b64, b64_again = embed("base64"), embed("base64")
    assert [r.headers["X-Mana-LLM-Cache"] for r in (floats, floats_again, b64, b64_again)] == [
        "miss", "hit", "miss", "hit"]
    assert floats_again.json() == floats.json() and b64_again.json() == b64.json()
    assert isinstance(b64_again.json()["data"][0]["embedding"], str)
    assert calls(fake, EMBED) == 2
    sdk_vector = sdk(gw).embeddings.create(model="mana/embed", input=["test_embeddings"]).data[0].embedding
    assert sdk_vector == pytest.approx(floats.json()["data"][0]["embedding"], rel=1e-6)  # the SDK's base64 hit
    assert calls(fake, EMBED) == 2


# --- cache_ttl in the alias data -------------------------------------------------------------


def test_cache_ttl_goes_through_the_api_the_one_validator_and_the_yaml_round_trip(gw, http, fake):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for bad in (-1, "60", 1.5, True, 30 * 24 * 3600 + 1):
        response = http.put("/v1/aliases/mana/ttl", headers=admin, json={"chain": [QWEN], "cache_ttl": bad})
        assert_error(response, 400, "invalid_request_error", param="cache_ttl")
    put = http.put("/v1/aliases/mana/ttl", headers=admin, json={"description": "", "chain": [QWEN], "cache_ttl": 60})
    assert put.status_code == 201 and put.json()["cache_ttl"] == 60
    assert http.get("/v1/aliases/mana/ttl").json() == {"name": "mana/ttl", "description": "", "chain": [QWEN],
                                                        "cache_ttl": 60}
    assert wait_for(lambda: ask(http, "test_ttl_api", model="mana/ttl").headers.get("X-Mana-LLM-Cache") == "hit",
                    timeout=5)  # served by the process within a poll
    exported = yaml.safe_load(gw.manage("export_aliases").stdout)["aliases"]
    assert exported["mana/ttl"]["cache_ttl"] == 60 and "cache_ttl" not in exported["mana/plain"]
    off = http.put("/v1/aliases/mana/ttl", headers=admin, json={"chain": [QWEN], "cache_ttl": 0})
    assert off.status_code == 200 and "cache_ttl" not in off.json()
    assert wait_for(lambda: "X-Mana-LLM-Cache" not in ask(http, "test_ttl_api", model="mana/ttl").headers, timeout=5)
    assert http.delete("/v1/aliases/mana/ttl", headers=admin).status_code == 204


def test_the_metrics_count_hits_misses_and_bypasses_per_alias(gw, http, fake):
    before = cache_counts(gw, "mana/solo")
    ask(http, "test_metrics", model="mana/solo")
    ask(http, "test_metrics", model="mana/solo")
    ask(http, "test_metrics", model="mana/solo", headers={"Cache-Control": "no-store"})
    after = cache_counts(gw, "mana/solo")
    assert {result: after.get(result, 0) - before.get(result, 0) for result in ("hit", "miss", "bypass")} == {
        "hit": 1, "miss": 1, "bypass": 1}


def test_the_lru_bound_holds_in_a_gateway(gw, http, make_server, fake, tmp_path):
    (tmp_path / "aliases.yaml").write_text(ALIASES)
    answer = len(ask(http, "test_bound 0", model="mana/plain").content)  # an entry: this, its key and ~60 bytes
    server = make_server({"ALIASES_FILE": str(tmp_path / "aliases.yaml"),
                          "CACHE_MAX_BYTES": str(2 * (answer + 200 + ENTRY_OVERHEAD))})  # room for two answers
    with httpx.Client(base_url=server.url, timeout=20) as client:
        for n in range(3):
            assert ask(client, f"test_bound {n}").headers["X-Mana-LLM-Cache"] == "miss"
        assert ask(client, "test_bound 2").headers["X-Mana-LLM-Cache"] == "hit"
        assert ask(client, "test_bound 0").headers["X-Mana-LLM-Cache"] == "miss"  # evicted by the third


# --- make run ----------------------------------------------------------------------------------


def test_make_run_answers_the_second_identical_request_without_the_upstream(fake, tmp_path):
    """`make run`'s launcher (manallm.serve) with `cache_ttl: 300` on an alias."""
    (tmp_path / "aliases.yaml").write_text(ALIASES)
    server = gateway_server(tmp_path, fake.url, {"ALIASES_FILE": str(tmp_path / "aliases.yaml")}).prepare().launch()
    try:
        client = sdk(server)
        first = client.chat.completions.with_raw_response.create(model="mana/cached",
                                                                 messages=chat(None, "make run")["messages"])
        second = client.chat.completions.with_raw_response.create(model="mana/cached",
                                                                  messages=chat(None, "make run")["messages"])
        assert (first.headers["X-Mana-LLM-Cache"], second.headers["X-Mana-LLM-Cache"]) == ("miss", "hit")
        assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
        assert fake.stats()["requests"] == {QWEN: 1}
    finally:
        server.stop()


def test_an_sdk_error_is_never_replayed(gw, fake):
    client = sdk(gw)
    fake.fault("ollama", "llama3.1:8b", times=1, status=500)
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="mana/solo", messages=chat(None, "test_sdk_error")["messages"])
    answer = client.chat.completions.create(model="mana/solo", messages=chat(None, "test_sdk_error")["messages"])
    assert answer.choices[0].message.content
    assert calls(fake, SOLO) == 2
