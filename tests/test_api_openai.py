"""End-to-end tests of the OpenAI-compatible API (README#model-names, README#endpoints, docs/architecture.md#routing) against a real daphne
process whose providers all point at the fake upstream, driven with httpx and with the
official ``openai`` package.

One gateway serves the whole module; the function-scoped ``fake`` fixture clears the
fake's faults and statistics before each test. The gateway runs with RETRIES=0 (no
backoff sleeps) and a breaker threshold no test reaches, so one test's failures never
open a breaker another test would trip over.
"""
import base64
import json
import re
import struct
import time

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.helpers import (SECRETS, assert_error, assert_no_traceback, assert_sdk_error, chat, content_of, sdk,
                           sse_events, user_messages, wait_for)
from tests.server import module_gateway

MAX_REQUEST_BYTES = 8192
FAST_TEXT = ["ollama/qwen2.5:7b", "groq/llama-3.1-8b-instant", "openrouter/anthropic/claude-3-haiku"]
SHIPPED_ALIASES = ["mana/fast-text", "mana/long-form", "mana/reasoning", "mana/structured", "mana/vision"]
PNG_1X1 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# --- helpers of this module -----------------------------------------------------------------


def hello(target, text="hi"):
    """What the fake upstream answers a plain user message with."""
    return f"Hello from {target}: {text}"


def upstream_calls(fake, target):
    return fake.stats()["requests"].get(target, 0)


# --- the module's gateway -------------------------------------------------------------


gw = module_gateway("api", RETRIES="0", BREAKER_FAILURE_THRESHOLD="1000", MODELS_CACHE_SECONDS="0",
                    MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES))


def in_flight(gateway):
    providers = httpx.get(f"{gateway.url}/v1/health", timeout=10).json()["providers"]
    return {name: entry["in_flight"] for name, entry in providers.items()}


@pytest.fixture(autouse=True)
def slots_are_released(gw):
    """Whatever a test did, every provider's concurrency slot comes back (never below 0)."""
    yield
    idle = {name: 0 for name in in_flight(gw)}
    assert wait_for(lambda: in_flight(gw) == idle, timeout=3), in_flight(gw)


@pytest.fixture
def client(gw, fake):
    with sdk(gw) as client:
        yield client


# --- chat ---------------------------------------------------------------------------------


def test_chat_plain_reports_the_serving_entry(http, fake):
    response = http.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "ollama/qwen2.5:7b"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": hello("ollama/qwen2.5:7b")}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] >= 1 and body["usage"]["completion_tokens"] >= 1
    assert response.headers["X-Mana-LLM-Resolved"] == "ollama/qwen2.5:7b"
    assert "X-Mana-LLM-Attempts" not in response.headers
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_chat_with_the_sdk(client, fake):
    raw = client.chat.completions.with_raw_response.create(
        model="mana/fast-text", messages=user_messages("hello sdk"), temperature=0.2, max_completion_tokens=50,
        top_p=0.9, stop=["\n\n"], presence_penalty=0.1, frequency_penalty=0.1, seed=7, user="u-1",
        metadata={"k": "v"}, store=False, parallel_tool_calls=False)
    completion = raw.parse()
    assert completion.model == "ollama/qwen2.5:7b"
    assert completion.choices[0].message.content == hello("ollama/qwen2.5:7b", "hello sdk")
    assert raw.headers["x-mana-llm-resolved"] == "ollama/qwen2.5:7b"
    assert raw.headers["x-request-id"]


@pytest.mark.parametrize("model, served, upstream_model", [
    (None, "ollama/qwen2.5:7b", "ollama/qwen2.5:7b"),  # no model: the default alias
    ("", "ollama/qwen2.5:7b", "ollama/qwen2.5:7b"),
    ("gemma3:12b", "ollama/gemma3:12b", "ollama/gemma3:12b"),  # a bare name is an Ollama model
    ("openrouter/anthropic/claude-3-haiku", "openrouter/anthropic/claude-3-haiku", "openrouter/anthropic/claude-3-haiku"),
    ("google/gemini-2.5-flash", "google/gemini-2.5-flash", "google/gemini-2.5-flash"),
    ("mana/long-form", "ollama/gemma3:12b", "ollama/gemma3:12b"),
])
def test_model_names(http, fake, model, served, upstream_model):
    response = http.post("/v1/chat/completions", json=chat(model))
    assert response.status_code == 200, response.text
    assert response.json()["model"] == served
    assert response.headers["X-Mana-LLM-Resolved"] == served
    assert response.json()["choices"][0]["message"]["content"].startswith("Hello from")
    # the provider saw its own model name (provider prefix stripped, the rest kept whole)
    assert upstream_calls(fake, upstream_model) == 1


def test_request_id_is_echoed(http, fake):
    response = http.post("/v1/chat/completions", json=chat(), headers={"X-Request-ID": "my-request-42"})
    assert response.headers["X-Request-ID"] == "my-request-42"
    error = http.post("/v1/chat/completions", json=chat("mana/nope"), headers={"X-Request-ID": "my-request-43"})
    assert error.headers["X-Request-ID"] == "my-request-43"
    other = http.get("/v1/models")
    assert other.headers["X-Request-ID"] != response.headers["X-Request-ID"]


# --- streaming ------------------------------------------------------------------------------


def test_stream_framing_models_and_headers(http, fake):
    response = http.post("/v1/chat/completions", json=chat(stream=True), headers={"X-Request-ID": "stream-1"})
    events = sse_events(response)
    assert response.headers["X-Mana-LLM-Resolved"] == "ollama/qwen2.5:7b"
    assert response.headers["X-Request-ID"] == "stream-1"
    assert "X-Mana-LLM-Attempts" not in response.headers
    assert events and all(event["model"] == "ollama/qwen2.5:7b" for event in events)
    assert all(event["object"] == "chat.completion.chunk" for event in events)
    assert content_of(events) == hello("ollama/qwen2.5:7b")
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any(event.get("usage") for event in events)  # not asked for


def test_stream_include_usage_with_the_sdk(client, fake):
    stream = client.chat.completions.create(model="openrouter/anthropic/claude-3-haiku", messages=user_messages("count me"),
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(chunk.model == "openrouter/anthropic/claude-3-haiku" for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == hello("openrouter/anthropic/claude-3-haiku", "count me")
    final = chunks[-1]
    assert final.choices == []
    assert final.usage is not None and final.usage.prompt_tokens == 2
    assert final.usage.completion_tokens >= 1 and final.usage.total_tokens == 2 + final.usage.completion_tokens
    assert [chunk for chunk in chunks[:-1] if chunk.usage] == []


@pytest.mark.parametrize("model", ["mana/fast-text", "google/gemini-2.5-flash"])
def test_stream_include_usage_from_translating_adapters(http, fake, model):
    events = sse_events(http.post("/v1/chat/completions",
                                  json=chat(model, stream=True, stream_options={"include_usage": True})))
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] >= 2
    assert all(event["model"] == events[0]["model"] for event in events)


async def test_stream_with_the_async_sdk(gw, fake):
    async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0, timeout=20) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="groq/llama-3.1-8b-instant", messages=user_messages("async hi"), stream=True)
        assert raw.headers["x-mana-llm-resolved"] == "groq/llama-3.1-8b-instant"
        stream = raw.parse()
        parts, models = [], set()
        async for chunk in stream:
            models.add(chunk.model)
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
    assert models == {"groq/llama-3.1-8b-instant"}
    assert "".join(parts) == hello("groq/llama-3.1-8b-instant", "async hi")


# --- tools, vision, structured output ---------------------------------------------------------


@pytest.mark.parametrize("model, served", [
    ("mana/structured", "ollama/qwen2.5:7b"),  # Ollama: tool calls translated to OpenAI's shape
    ("groq/llama-3.1-8b-instant", "groq/llama-3.1-8b-instant"),
    ("google/gemini-2.5-flash", "google/gemini-2.5-flash"),
])
def test_tool_call_round_trip(client, fake, model, served):
    messages = user_messages("What is the weather in Paris?")
    first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="auto")
    assert first.model == served
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(call.function.arguments, str)
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "22 degrees and sunny"}]
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert second.model == served
    assert second.choices[0].message.content == "Tool said: 22 degrees and sunny"
    assert second.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["mana/structured", "groq/llama-3.1-8b-instant", "google/gemini-2.5-flash"])
def test_streamed_tool_call(client, fake, model):
    stream = client.chat.completions.create(model=model, messages=user_messages("weather in Paris?"),
                                            tools=[WEATHER_TOOL], stream=True)
    name, arguments, finish, call_ids = "", "", None, set()
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.id:
                    call_ids.add(delta.id)
                name += (delta.function.name or "") if delta.function else ""
                arguments += (delta.function.arguments or "") if delta.function else ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and len(call_ids) == 1
    assert json.loads(arguments) == {"city": "Paris"}
    assert finish == "tool_calls"


def test_vision_data_url_is_served_by_the_vision_model(client, fake):
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1X1}"}},
    ]}]
    raw = client.chat.completions.with_raw_response.create(model="mana/vision", messages=messages)
    completion = raw.parse()
    assert completion.model == "ollama/llava:7b"
    assert raw.headers["x-mana-llm-resolved"] == "ollama/llava:7b"
    assert "[images: 1]" in completion.choices[0].message.content
    sent = fake.stats()["last_request"]["ollama/llava:7b"]
    assert sent["messages"][-1]["images"] == [PNG_1X1]


def test_vision_remote_image_url_is_a_clear_400(client, fake):
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]}]
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model="mana/vision", messages=messages)
    exc = assert_sdk_error(excinfo, openai.BadRequestError, 400, "capability")
    assert "data:image" in exc.body["message"]  # says what to send instead
    assert fake.stats()["requests"] == {}  # refused before any upstream call, no fallback


def test_response_format_json_object(client, fake):
    completion = client.chat.completions.create(
        model="mana/structured", messages=[{"role": "system", "content": "Answer in JSON."}, *user_messages("list colours")],
        response_format={"type": "json_object"})
    assert completion.model == "ollama/qwen2.5:7b"
    data = json.loads(completion.choices[0].message.content)
    assert data["upstream"] == "ollama" and data["model"] == "qwen2.5:7b"
    assert fake.stats()["last_request"]["ollama/qwen2.5:7b"]["format"] == "json"


def test_response_format_json_schema(client, fake):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    completion = client.chat.completions.create(
        model="groq/llama-3.1-8b-instant", messages=user_messages("answer"),
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert json.loads(completion.choices[0].message.content)["upstream"] == "groq"


# --- embeddings -----------------------------------------------------------------------------


@pytest.mark.parametrize("model, served", [
    ("ollama/nomic-embed-text", "ollama/nomic-embed-text"),
    ("openai/text-embedding-3-small", "openai/text-embedding-3-small"),
    ("google/text-embedding-004", "google/text-embedding-004"),
])
def test_embeddings_float_and_base64_agree(client, http, fake, model, served):
    texts = ["first text", "second text"]
    as_float = client.embeddings.create(model=model, input=texts, encoding_format="float")
    by_default = client.embeddings.create(model=model, input=texts)  # the SDK asks for base64 and decodes it
    assert as_float.model == by_default.model == served
    assert [item.index for item in as_float.data] == [0, 1]
    floats = [item.embedding for item in as_float.data]
    assert all(len(vector) == 8 and all(isinstance(x, float) for x in vector) for vector in floats)
    assert [item.embedding for item in by_default.data] == floats
    assert floats[0] != floats[1]

    raw = http.post("/v1/embeddings", json={"model": model, "input": texts, "encoding_format": "base64"})
    assert raw.status_code == 200 and raw.headers["X-Mana-LLM-Resolved"] == served
    encoded = raw.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert list(struct.unpack("<8f", base64.b64decode(encoded))) == floats[0]


def test_embeddings_single_string_and_usage(http, fake):
    response = http.post("/v1/embeddings", json={"model": "ollama/nomic-embed-text", "input": "one two three"})
    body = response.json()
    assert response.status_code == 200 and body["object"] == "list"
    assert len(body["data"]) == 1 and body["data"][0]["object"] == "embedding"
    assert body["usage"]["prompt_tokens"] >= 1


def test_embeddings_alias_falls_back(client, fake):
    fake.fault("ollama", "qwen2.5:7b", status=500)
    raw = client.embeddings.with_raw_response.create(model="mana/fast-text", input=["x"])
    assert raw.parse().model == "groq/llama-3.1-8b-instant"
    assert raw.headers["x-mana-llm-resolved"] == "groq/llama-3.1-8b-instant"
    assert raw.headers["x-mana-llm-attempts"] == "ollama/qwen2.5:7b=http_500"


@pytest.mark.parametrize("body, param", [
    ({"model": "ollama/nomic-embed-text"}, "input"),
    ({"model": "ollama/nomic-embed-text", "input": []}, "input"),
    ({"model": "ollama/nomic-embed-text", "input": [1, "a"]}, "input"),
    ({"model": "ollama/nomic-embed-text", "input": "a", "encoding_format": "hex"}, "encoding_format"),
    ({"model": 5, "input": "a"}, "model"),
])
def test_embeddings_validation(http, fake, body, param):
    assert_error(http.post("/v1/embeddings", json=body), 400, "invalid_request_error", param=param)
    assert fake.stats()["requests"] == {}


# --- models and aliases ---------------------------------------------------------------------


def test_models_list(client, http, fake):
    models = {model.id: model for model in client.models.list()}
    for alias in SHIPPED_ALIASES:
        assert models[alias].owned_by == "manallm" and models[alias].object == "model"
    assert models["openrouter/anthropic/claude-3-haiku"].owned_by == "openrouter"
    assert models["ollama/qwen2.5:7b"].owned_by == "ollama"
    assert models["groq/llama-3.1-8b-instant"].owned_by == "groq"
    assert models["google/gemini-2.5-flash"].owned_by == "google"
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    aliases = [m["id"] for m in body["data"] if m["owned_by"] == "manallm"]
    assert aliases == sorted(aliases) and set(SHIPPED_ALIASES) <= set(aliases)
    assert body["data"][:len(aliases)] == [{"id": a, "object": "model", "created": 0, "owned_by": "manallm"}
                                          for a in aliases]  # aliases first, then the providers' models


def test_models_list_survives_broken_providers(http, fake):
    fake.fault("groq", "*", status=500)
    fake.fault("together", "*", hang=True)
    started = time.monotonic()
    response = http.get("/v1/models")
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 10
    ids = {model["id"] for model in response.json()["data"]}
    assert set(SHIPPED_ALIASES) <= ids
    assert "openrouter/anthropic/claude-3-haiku" in ids and "ollama/qwen2.5:7b" in ids
    requests = fake.stats()["requests"]
    assert requests.get("groq/*") and requests.get("together/*")  # the broken lists were asked for


@pytest.mark.parametrize("path, expected", [
    ("openrouter/anthropic/claude-3-haiku", ("openrouter/anthropic/claude-3-haiku", "openrouter")),
    ("openrouter%2Fanthropic%2Fclaude-3-haiku", ("openrouter/anthropic/claude-3-haiku", "openrouter")),
    ("openrouter/anthropic%2Fclaude-3-haiku", ("openrouter/anthropic/claude-3-haiku", "openrouter")),
    ("mana/fast-text", ("mana/fast-text", "manallm")),
    ("mana%2Ffast-text", ("mana/fast-text", "manallm")),
    ("ollama/qwen2.5:7b", ("ollama/qwen2.5:7b", "ollama")),
    ("qwen2.5:7b", ("ollama/qwen2.5:7b", "ollama")),
])
def test_model_detail(http, fake, path, expected):
    response = http.get(f"/v1/models/{path}")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": expected[0], "object": "model", "created": 0, "owned_by": expected[1]}


def test_model_detail_with_the_sdk(client, fake):
    assert client.models.retrieve("openrouter/anthropic/claude-3-haiku").owned_by == "openrouter"
    assert client.models.retrieve("mana/vision").owned_by == "manallm"
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.models.retrieve("openrouter/no/such-model")
    assert_sdk_error(excinfo, openai.NotFoundError, 404, "model_not_found")


@pytest.mark.parametrize("path", ["mana/nope", "nope/model", "groq/no-such-model", "mana%2Fnope"])
def test_model_detail_unknown(http, fake, path):
    assert_error(http.get(f"/v1/models/{path}"), 404, "model_not_found")


def test_aliases_list(http, fake):
    response = http.get("/v1/aliases")
    assert response.status_code == 200
    body = response.json()
    assert body["default"] == "mana/fast-text"
    names = [alias["name"] for alias in body["aliases"]]
    assert names == sorted(names) and set(SHIPPED_ALIASES) <= set(names)
    fast = next(alias for alias in body["aliases"] if alias["name"] == "mana/fast-text")
    assert fast == {"name": "mana/fast-text", "description": "Short answers, classification, single-shot Q&A",
                    "chain": FAST_TEXT}


# --- errors (README#endpoints table) -------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"{not json", b"", b"   ", b"[1, 2]", b'"a string"',
                                     b'{"model": "mana/fast-text", "messages": [{"role": "user", "content": "caf\xe9"}]}',
                                     b"\xff\xfe\x00{"])
def test_malformed_or_non_utf8_body(http, fake, content):
    response = http.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_request_error")
    assert fake.stats()["requests"] == {}


def test_non_utf8_body_says_so(http, fake):
    response = http.post("/v1/chat/completions", content=b'{"model": "x", "messages": "\xe9"}')
    assert "UTF-8" in assert_error(response, 400, "invalid_request_error")["message"]


@pytest.mark.parametrize("body, param", [
    ({"model": "mana/fast-text"}, "messages"),
    ({"model": "mana/fast-text", "messages": []}, "messages"),
    ({"model": "mana/fast-text", "messages": "hi"}, "messages"),
    (chat(temperature="hot"), "temperature"),
    (chat(temperature=3), "temperature"),
    (chat(top_p=True), "top_p"),
    (chat(max_tokens="ten"), "max_tokens"),
    (chat(max_completion_tokens=0), "max_completion_tokens"),
    (chat(stream="yes"), "stream"),
    (chat(stop=[1]), "stop"),
    (chat(tools={"name": "x"}), "tools"),
    (chat(tools=[{"type": "function"}]), "tools[0]"),
    (chat(response_format={"type": "xml"}), "response_format.type"),
    (chat(stream_options="usage"), "stream_options"),
    (chat(model=7), "model"),
    # A model name reaches a header, metric labels and breaker keys: no control characters, sane length.
    (chat(model="gemma3:4b\n"), "model"),
    (chat(model="ollama/foo\r\nX-Evil: 1"), "model"),
    (chat(model="ollama/a\u0000b"), "model"),
    (chat(model="ollama/" + "y" * 300), "model"),
    (chat(stream=True, model="qwen2.5:7b\n"), "model"),
    (chat(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    ({"model": "mana/fast-text", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"model": "mana/fast-text", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "mana/fast-text", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0].image_url"),
])
def test_schema_violations_name_the_field(http, fake, body, param):
    assert_error(http.post("/v1/chat/completions", json=body), 400, "invalid_request_error", param=param)
    assert fake.stats()["requests"] == {}


def test_wrong_type_with_the_sdk(client, fake):
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model="mana/fast-text", messages=user_messages(), temperature="hot")
    assert_sdk_error(excinfo, openai.BadRequestError, 400, "invalid_request_error", param="temperature")
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model="mana/fast-text", messages=[])
    assert_sdk_error(excinfo, openai.BadRequestError, 400, "invalid_request_error", param="messages")


def test_unknown_fields_are_accepted(http, fake):
    response = http.post("/v1/chat/completions", json=chat(logit_bias={"50256": -100}, n=1, modalities=["text"],
                                                           service_tier="auto", reasoning_effort="low",
                                                           prediction=None, brand_new_field={"x": 1}))
    assert response.status_code == 200, response.text


def test_body_over_max_request_bytes_is_413(http, client, fake):
    big = chat(text="x" * (MAX_REQUEST_BYTES + 10))
    assert_error(http.post("/v1/chat/completions", json=big), 413, "invalid_request_error")
    # a chunked body (no Content-Length) is measured too
    payload = json.dumps(big).encode()
    chunked = http.post("/v1/chat/completions", content=iter([payload[:100], payload[100:]]))
    assert "content-length" not in chunked.request.headers
    assert_error(chunked, 413, "invalid_request_error")
    with pytest.raises(openai.APIStatusError) as excinfo:
        client.embeddings.create(model="ollama/nomic-embed-text", input="y" * (MAX_REQUEST_BYTES + 10))
    assert_sdk_error(excinfo, openai.APIStatusError, 413, "invalid_request_error")
    assert fake.stats()["requests"] == {}
    # just under the limit still works
    ok = http.post("/v1/chat/completions", json=chat(text="x" * (MAX_REQUEST_BYTES - 200)))
    assert ok.status_code == 200


def test_unknown_alias_is_404_listing_known_aliases(client, fake):
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.chat.completions.create(model="mana/nope", messages=user_messages())
    exc = assert_sdk_error(excinfo, openai.NotFoundError, 404, "model_not_found", param="model")
    assert all(alias in exc.body["message"] for alias in SHIPPED_ALIASES)
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.embeddings.create(model="mana/nope", input="x")
    assert_sdk_error(excinfo, openai.NotFoundError, 404, "model_not_found")


def test_unknown_provider_is_404(http, fake):
    assert_error(http.post("/v1/chat/completions", json=chat("nope/some-model")), 404, "model_not_found")


@pytest.mark.parametrize("model, upstream", [
    ("nope:1b", "ollama"), ("groq/nope-model", "groq"), ("google/nope-model", "google"),
])
def test_model_unknown_to_its_provider_is_404_model_not_found(client, fake, model, upstream):
    fake.fault(upstream, "*", error_code="model_not_found")
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.chat.completions.create(model=model, messages=user_messages())
    exc = assert_sdk_error(excinfo, openai.NotFoundError, 404, "model_not_found")
    assert "nope" in exc.body["message"]


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/nope"), ("POST", "/v1/completions"), ("GET", "/nope"), ("POST", "/v1/chat/completions/extra"),
])
def test_unknown_route_is_404_json(http, fake, method, path):
    assert_error(http.request(method, path, json={}), 404, "invalid_request_error")


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/chat/completions"), ("PUT", "/v1/chat/completions"), ("GET", "/v1/embeddings"),
    ("POST", "/v1/models"), ("DELETE", "/v1/models/mana/fast-text"), ("POST", "/v1/health"),
])
def test_wrong_method_is_405_json(http, fake, method, path):
    assert_error(http.request(method, path), 405, "invalid_request_error")


def test_unknown_route_and_wrong_method_with_the_sdk(client, fake):
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.get("/nope", cast_to=object)
    assert_sdk_error(excinfo, openai.NotFoundError, 404, "invalid_request_error")
    with pytest.raises(openai.APIStatusError) as excinfo:
        client.delete("/chat/completions", cast_to=object)
    assert_sdk_error(excinfo, openai.APIStatusError, 405, "invalid_request_error")


def test_tools_to_a_model_without_tool_support_is_400_capability(client, fake):
    # /api/show decides, even for a family on the tool-capable fallback list
    fake.fault("ollama", "qwen2.5:0.5b", capabilities=["completion"])
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model="ollama/qwen2.5:0.5b", messages=user_messages("weather?"), tools=[WEATHER_TOOL])
    assert_sdk_error(excinfo, openai.BadRequestError, 400, "capability", param="tools")
    assert "messages" not in fake.stats()["last_request"]["ollama/qwen2.5:0.5b"]  # only /api/show was called
    # without tools the same model answers
    assert client.chat.completions.create(model="ollama/qwen2.5:0.5b", messages=user_messages()).model == "ollama/qwen2.5:0.5b"


def test_content_policy_is_422_blocked(client, fake):
    fake.fault("groq", "llama-3.1-8b-instant", error_code="content_policy_violation")
    with pytest.raises(openai.UnprocessableEntityError) as excinfo:
        client.chat.completions.create(model="groq/llama-3.1-8b-instant", messages=user_messages())
    exc = assert_sdk_error(excinfo, openai.UnprocessableEntityError, 422, "blocked")
    assert "safety" in exc.body["message"]  # carries the provider's reason


def test_blocked_on_an_alias_does_not_fall_back(http, fake):
    fake.fault("ollama", "qwen2.5:7b", safety=True)
    response = http.post("/v1/chat/completions", json=chat())
    assert_error(response, 422, "blocked")
    assert upstream_calls(fake, "groq/llama-3.1-8b-instant") == 0


def test_rate_limit_with_no_fallback_left_is_429(client, fake):
    fake.fault("groq", "llama-3.1-8b-instant", status=429, headers={"Retry-After": "120"})
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as excinfo:
        client.chat.completions.create(model="groq/llama-3.1-8b-instant", messages=user_messages())
    assert time.monotonic() - started < 5  # a long Retry-After is not waited out
    assert_sdk_error(excinfo, openai.RateLimitError, 429, "rate_limit")


def test_every_entry_rate_limited_is_429(http, fake):
    for target in FAST_TEXT:
        provider, _, model = target.partition("/")
        fake.fault(provider, model, status=429, headers={"Retry-After": "60"})
    error = assert_error(http.post("/v1/chat/completions", json=chat()), 429, "rate_limit")
    assert [attempt["model"] for attempt in error["attempts"]] == FAST_TEXT


def test_upstream_auth_is_502_auth(client, fake):
    fake.fault("groq", "llama-3.1-8b-instant", error_code="invalid_api_key")
    with pytest.raises(openai.InternalServerError) as excinfo:
        client.chat.completions.create(model="groq/llama-3.1-8b-instant", messages=user_messages())
    assert_sdk_error(excinfo, openai.InternalServerError, 502, "auth")


def test_upstream_auth_echoing_our_key_does_not_leak_it(http, fake):
    fake.fault("groq", "llama-3.1-8b-instant", status=401,
               body={"error": {"message": "Invalid key 'test-groq-key' (Bearer test-groq-key)"}})
    assert_error(http.post("/v1/chat/completions", json=chat("groq/llama-3.1-8b-instant")), 502, "auth")
    fake.fault("openrouter", "*", status=500, body={"error": {"message": "boom for key test-openrouter-key"}})
    assert_error(http.post("/v1/chat/completions", json=chat("openrouter/openai/gpt-4o")), 503, "no_healthy_provider")
    health = http.get("/v1/health").text
    assert not any(secret in health for secret in SECRETS)


def test_truncated_at_max_tokens_is_502(http, fake):
    fake.fault("google", "gemini-2.5-flash", empty=True, finish_reason="length")
    assert_error(http.post("/v1/chat/completions", json=chat("google/gemini-2.5-flash", max_tokens=1)),
                 502, "truncated")


def test_every_entry_failed_is_503_with_attempts(client, fake):
    fake.fault("ollama", "qwen2.5:7b", status=500)
    fake.fault("groq", "llama-3.1-8b-instant", status=502)
    fake.fault("openrouter", "anthropic/claude-3-haiku", status=503)
    with pytest.raises(openai.InternalServerError) as excinfo:
        client.chat.completions.create(model="mana/fast-text", messages=user_messages())
    exc = assert_sdk_error(excinfo, openai.InternalServerError, 503, "no_healthy_provider")
    assert exc.body["attempts"] == [
        {"model": "ollama/qwen2.5:7b", "reason": "http_500"},
        {"model": "groq/llama-3.1-8b-instant", "reason": "http_502"},
        {"model": "openrouter/anthropic/claude-3-haiku", "reason": "http_503"},
    ]
    assert exc.response.headers["X-Mana-LLM-Attempts"] == (
        "ollama/qwen2.5:7b=http_500, groq/llama-3.1-8b-instant=http_502, openrouter/anthropic/claude-3-haiku=http_503")
    assert "X-Mana-LLM-Resolved" not in exc.response.headers


@pytest.mark.parametrize("fault", [
    {"status": 200, "body": {"choices": "nonsense"}},
    {"status": 200, "body": "<html>not json</html>"},
    {"status": 200, "body": {"unexpected": [1, 2, 3]}},
    {"status": 200, "body": []},
    {"reset": True},
])
def test_garbage_upstream_answers_never_leak_a_traceback(http, fake, fault):
    fake.fault("groq", "*", **fault)
    response = http.post("/v1/chat/completions", json=chat("groq/llama-3.1-8b-instant"),
                         headers={"X-Request-ID": "garbage-1"})
    assert response.status_code in (500, 502, 503), response.text
    error = assert_error(response, response.status_code, response.json()["error"]["type"])
    if response.status_code == 500:
        assert error["type"] == "server_error" and "garbage-1" in error["message"]
    streamed = http.post("/v1/chat/completions", json=chat("groq/llama-3.1-8b-instant", stream=True))
    assert_no_traceback(streamed.text)
    assert streamed.status_code != 200 or streamed.text.endswith("data: [DONE]\n\n")


# --- fallback, visible through the API ------------------------------------------------------------


def test_fallback_plain_sets_attempts(client, fake):
    fake.fault("ollama", "qwen2.5:7b", status=500)
    raw = client.chat.completions.with_raw_response.create(model="mana/fast-text", messages=user_messages())
    assert raw.parse().model == "groq/llama-3.1-8b-instant"
    assert raw.headers["x-mana-llm-resolved"] == "groq/llama-3.1-8b-instant"
    assert raw.headers["x-mana-llm-attempts"] == "ollama/qwen2.5:7b=http_500"
    assert raw.parse().choices[0].message.content == hello("groq/llama-3.1-8b-instant")


def test_fallback_over_two_entries(http, fake):
    fake.fault("ollama", "qwen2.5:7b", reset=True)
    fake.fault("groq", "llama-3.1-8b-instant", error_code="context_length_exceeded")
    response = http.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "openrouter/anthropic/claude-3-haiku"
    assert response.headers["X-Mana-LLM-Attempts"] == (
        "ollama/qwen2.5:7b=protocol_error, groq/llama-3.1-8b-instant=context_length_exceeded")


def test_stream_falls_back_before_the_first_token(http, fake):
    fake.fault("ollama", "qwen2.5:7b", status=500)
    response = http.post("/v1/chat/completions", json=chat(stream=True))
    events = sse_events(response)
    assert response.headers["X-Mana-LLM-Resolved"] == "groq/llama-3.1-8b-instant"
    assert response.headers["X-Mana-LLM-Attempts"] == "ollama/qwen2.5:7b=http_500"
    assert all(event["model"] == "groq/llama-3.1-8b-instant" for event in events)
    assert content_of(events) == hello("groq/llama-3.1-8b-instant")


def test_stream_first_token_timeout_and_disabled_entry(http, fake):
    alias = {"description": "api test", "chain": [
        {"target": "ollama/qwen2.5:7b", "first_token_timeout": 0.5},
        {"target": "together/gpt-4o-mini", "enabled": False},
        "groq/llama-3.1-8b-instant",
    ]}
    assert http.put("/v1/aliases/mana/api-test", json=alias).status_code in (200, 201)
    try:
        fake.fault("ollama", "qwen2.5:7b", first_token_delay=5)
        response = http.post("/v1/chat/completions", json=chat("mana/api-test", stream=True))
        events = sse_events(response)
        assert response.headers["X-Mana-LLM-Resolved"] == "groq/llama-3.1-8b-instant"
        assert response.headers["X-Mana-LLM-Attempts"] == (
            "ollama/qwen2.5:7b=first_token_timeout, together/gpt-4o-mini=disabled")
        assert content_of(events) == hello("groq/llama-3.1-8b-instant")
        assert upstream_calls(fake, "together/gpt-4o-mini") == 0
    finally:
        assert http.delete("/v1/aliases/mana/api-test").status_code == 204


def test_stream_cut_midway_ends_with_an_error_event_not_a_splice(http, fake):
    fake.fault("ollama", "qwen2.5:7b", cut_after=2)
    response = http.post("/v1/chat/completions", json=chat(text="one two three four", stream=True))
    events = sse_events(response)  # ... still ends with [DONE]
    assert response.headers["X-Mana-LLM-Resolved"] == "ollama/qwen2.5:7b"
    *chunks, last = events
    assert set(last) == {"error"} and last["error"]["message"] and last["error"]["type"]
    assert_no_traceback(json.dumps(last))
    assert chunks and all(event["model"] == "ollama/qwen2.5:7b" for event in chunks)
    assert content_of(chunks) == "Hello from "  # the two chunks that got through, nothing spliced after
    assert not any(choice.get("finish_reason") for event in chunks for choice in event["choices"])
    assert upstream_calls(fake, "groq/llama-3.1-8b-instant") == 0


def test_stream_upstream_error_event_midway(http, fake):
    fake.fault("groq", "llama-3.1-8b-instant", error_event_after=2)
    events = sse_events(http.post("/v1/chat/completions", json=chat("groq/llama-3.1-8b-instant", stream=True)))
    assert "error" in events[-1] and "choices" not in events[-1]
    assert not any(choice.get("finish_reason") for event in events[:-1] for choice in event["choices"])


def test_stream_malformed_event_is_skipped(http, fake):
    fake.fault("groq", "llama-3.1-8b-instant", malformed_after=2)
    events = sse_events(http.post("/v1/chat/completions", json=chat("groq/llama-3.1-8b-instant", stream=True)))
    assert content_of(events) == hello("groq/llama-3.1-8b-instant")
    assert not any("error" in event for event in events)


def test_stream_whole_chain_failure_is_a_plain_503(http, fake):
    for target, status in zip(FAST_TEXT, (500, 503, 500)):
        provider, _, model = target.partition("/")
        fake.fault(provider, model, status=status)
    response = http.post("/v1/chat/completions", json=chat(stream=True))
    error = assert_error(response, 503, "no_healthy_provider")
    assert [attempt["reason"] for attempt in error["attempts"]] == ["http_500", "http_503", "http_500"]
    assert response.headers["X-Mana-LLM-Attempts"].startswith("ollama/qwen2.5:7b=http_500, ")


def test_stream_errors_before_the_first_token_are_plain_json(client, fake):
    fake.fault("groq", "llama-3.1-8b-instant", error_code="content_policy_violation")
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="groq/llama-3.1-8b-instant", messages=user_messages(), stream=True)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="mana/nope", messages=user_messages(), stream=True)


def test_empty_upstream_stream_is_a_success(http, fake):
    fake.fault("groq", "llama-3.1-8b-instant", empty=True)
    response = http.post("/v1/chat/completions", json=chat("groq/llama-3.1-8b-instant", stream=True))
    events = sse_events(response)
    assert content_of(events) == "" and not any("error" in event for event in events)
    assert response.headers["X-Mana-LLM-Resolved"] == "groq/llama-3.1-8b-instant"


# --- client disconnect ------------------------------------------------------------------------


def test_client_disconnect_cancels_the_upstream(gw, fake):
    fake.fault("ollama", "qwen2.5:7b", stall_after=1)
    with httpx.Client(base_url=gw.url, timeout=20) as http:
        with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()  # keep a reference: a dropped generator closes the response
            first = next(chunks)
            assert first.startswith(b"data: ") and b"Hello" in first
            assert fake.stats()["active"] == 1  # the upstream is stalled, still connected
            assert in_flight(gw)["ollama"] == 1
        closed_at = time.monotonic()  # leaving the block closes the client's connection
        assert wait_for(lambda: fake.stats()["active"] == 0, timeout=1.0)
        assert time.monotonic() - closed_at < 1.0
        assert fake.stats()["disconnects"] == 1
        assert wait_for(lambda: http.get("/v1/health").json()["providers"]["ollama"]["in_flight"] == 0, timeout=2)
        # the slot is really free: the next request is served normally
        assert http.post("/v1/chat/completions", json=chat()).json()["model"] == "ollama/qwen2.5:7b"
