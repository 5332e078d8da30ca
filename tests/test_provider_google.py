"""GoogleProvider through the real google-genai SDK against the fake upstream (loopback HTTP)."""
import base64
import json

import httpx
import pytest

from fixtures.fake_upstream import embedding_vector
from providers import errors
from providers.google import GoogleProvider
from tests.helpers import collect, unused_port, user

KEY = "test-key-AIzaSyNeverLeakMe0123456789"
MODEL = "gemini-2.5-flash"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image-bytes").decode()
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def make(url, **kwargs):
    options = {"api_key": KEY, "timeout": 5, "connect_timeout": 1, "default_model": MODEL}
    options.update(kwargs)
    return GoogleProvider("google", base_url=url, **options)


@pytest.fixture
async def google(fake):
    provider = make(fake.url + "/google")
    yield provider
    await provider.aclose()


def sent(fake, model=MODEL):
    return fake.stats()["last_request"][f"google/{model}"]


def assert_no_key(exc):
    for text in (str(exc), repr(exc), json.dumps(exc.body())):
        assert KEY not in text


async def fails(cls, awaitable):
    with pytest.raises(cls) as info:
        await awaitable
    assert_no_key(info.value)
    return info.value


async def stream_fails(cls, iterator):
    chunks = []
    with pytest.raises(cls) as info:
        async for chunk in iterator:
            chunks.append(chunk)
    assert_no_key(info.value)
    return info.value, chunks


def refused_url():
    return f"http://127.0.0.1:{unused_port()}/google"


# --- plain chat ----------------------------------------------------------------------------


async def test_text_answer(google, fake):
    answer = await google.chat(MODEL, user("hi there"))
    assert answer["object"] == "chat.completion"
    assert answer["model"] == MODEL
    choice = answer["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": f"Hello from google/{MODEL}: hi there"}
    assert choice["finish_reason"] == "stop"
    assert answer["usage"]["prompt_tokens"] == 2
    assert answer["usage"]["completion_tokens"] == len(choice["message"]["content"].split())
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    # The key travels in the header, never the URL.
    assert fake.stats()["last_headers"][f"google/{MODEL}"]["x-goog-api-key"] == KEY


async def test_empty_model_uses_default(google, fake):
    answer = await google.chat("", user("default please"))
    assert answer["model"] == MODEL
    assert fake.stats()["requests"][f"google/{MODEL}"] == 1


async def test_request_translation(google, fake):
    body = {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ],
        "temperature": 0.2, "top_p": 0.9, "max_completion_tokens": 64, "max_tokens": 999,
        "stop": "END", "presence_penalty": 0.1, "frequency_penalty": 0.3, "seed": 7,
    }
    before = json.dumps(body, sort_keys=True)
    answer = await google.chat(MODEL, body)
    assert json.dumps(body, sort_keys=True) == before  # the body is never mutated
    assert answer["choices"][0]["message"]["content"].endswith(": second")
    request = sent(fake)
    assert request["systemInstruction"]["parts"] == [{"text": "Be terse.\n\nAnswer in English."}]
    assert [content["role"] for content in request["contents"]] == ["user", "model", "user"]
    assert request["contents"][1]["parts"] == [{"text": "ok"}]
    config = request["generationConfig"]
    assert config["temperature"] == 0.2
    assert config["topP"] == 0.9
    assert config["maxOutputTokens"] == 64
    assert config["stopSequences"] == ["END"]
    assert config["presencePenalty"] == 0.1
    assert config["frequencyPenalty"] == 0.3
    assert config["seed"] == 7


# --- streaming -------------------------------------------------------------------------------


async def test_stream(google):
    chunks = await collect(google.chat_stream(MODEL, user("stream me please")))
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["model"] == MODEL for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    content = [chunk for chunk in chunks if chunk["choices"] and chunk["choices"][0]["delta"].get("content")]
    assert len(content) > 1  # word by word
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in content)
    assert text == f"Hello from google/{MODEL}: stream me please"
    finish = [chunk for chunk in chunks if chunk["choices"] and chunk["choices"][0]["finish_reason"]]
    assert [chunk["choices"][0]["finish_reason"] for chunk in finish] == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": len(text.split()),
                                   "total_tokens": 3 + len(text.split())}


# --- tools -----------------------------------------------------------------------------------


async def test_tool_call_answer(google, fake):
    body = {"messages": [{"role": "user", "content": "What's the weather in Paris?"}],
            "tools": [WEATHER_TOOL], "tool_choice": "required"}
    answer = await google.chat(MODEL, body)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    request = sent(fake)
    (declaration,) = request["tools"][0]["functionDeclarations"]
    assert declaration["name"] == "get_weather"
    assert declaration["description"] == "Current weather for a city"
    schema = declaration.get("parametersJsonSchema") or declaration.get("parameters_json_schema")
    assert schema == WEATHER_TOOL["function"]["parameters"]
    assert request["toolConfig"]["functionCallingConfig"]["mode"] == "ANY"


@pytest.mark.parametrize("choice, mode, names", [
    ("none", "NONE", None),
    ("auto", "AUTO", None),
    ({"type": "function", "function": {"name": "get_weather"}}, "ANY", ["get_weather"]),
])
async def test_tool_choice(google, fake, choice, mode, names):
    await google.chat(MODEL, {"messages": [{"role": "user", "content": "hello"}], "tools": [WEATHER_TOOL],
                              "tool_choice": choice})
    config = sent(fake)["toolConfig"]["functionCallingConfig"]
    assert config["mode"] == mode
    assert config.get("allowedFunctionNames") == names


async def test_tool_results_go_back(google, fake):
    body = {"messages": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny, 21 C"},
    ], "tools": [WEATHER_TOOL]}
    answer = await google.chat(MODEL, body)
    assert answer["choices"][0]["message"]["content"] == "Tool said: sunny, 21 C"
    contents = sent(fake)["contents"]
    assert [content["role"] for content in contents] == ["user", "model", "user"]
    call = contents[1]["parts"][0]["functionCall"]
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    response = contents[2]["parts"][0]["functionResponse"]
    assert response["name"] == "get_weather"
    assert response["response"] == {"result": "sunny, 21 C"}


async def test_parallel_tool_results_share_one_turn_and_json_results_pass_as_objects(google, fake):
    body = {"messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    ], "tools": [WEATHER_TOOL]}
    await google.chat(MODEL, body)
    contents = sent(fake)["contents"]
    assert [content["role"] for content in contents] == ["user", "model", "user"]
    assert [part["functionCall"]["args"] for part in contents[1]["parts"]] == [{"city": "Paris"}, {}]
    responses = [part["functionResponse"] for part in contents[2]["parts"]]
    assert [(r["name"], r["response"]) for r in responses] == [
        ("get_weather", {"temp": 21}), ("get_time", {"result": "noon"})]


async def test_tool_message_without_matching_call_is_refused(google, fake):
    body = {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "y"}]}
    await fails(errors.CapabilityError, google.chat(MODEL, body))
    assert fake.stats()["requests"] == {}


async def test_stream_tool_call(google):
    body = {"messages": [{"role": "user", "content": "weather in Paris?"}], "tools": [WEATHER_TOOL]}
    chunks = await collect(google.chat_stream(MODEL, body))
    calls = [chunk["choices"][0]["delta"]["tool_calls"] for chunk in chunks
             if chunk["choices"] and chunk["choices"][0]["delta"].get("tool_calls")]
    assert len(calls) == 1
    (call,) = calls[0]
    assert call["index"] == 0 and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]]
    assert finishes[-1] == "tool_calls"
    assert "usage" in chunks[-1]


async def test_supports_tools(google):
    assert await google.supports_tools(MODEL) is True


# --- vision and structured output --------------------------------------------------------------


async def test_vision_data_url_becomes_inline_data(google, fake):
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]}]}
    answer = await google.chat(MODEL, body)
    assert answer["choices"][0]["message"]["content"].endswith("what is this [images: 1]")
    (content,) = sent(fake)["contents"]
    inline = content["parts"][1].get("inlineData") or content["parts"][1].get("inline_data")
    assert inline.get("mimeType", inline.get("mime_type")) == "image/png"
    assert base64.b64decode(inline["data"]) == base64.b64decode(PNG)


async def test_remote_image_url_is_a_capability_error(google, fake):
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}
    error = await fails(errors.CapabilityError, google.chat(MODEL, body))
    assert "data:" in error.message
    assert fake.stats()["requests"] == {}


async def test_structured_output_json_schema(google, fake):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    body = {**user("give json"), "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    answer = await google.chat(MODEL, body)
    assert json.loads(answer["choices"][0]["message"]["content"])["model"] == MODEL
    config = sent(fake)["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema


async def test_structured_output_json_object(google, fake):
    await google.chat(MODEL, {**user("json"), "response_format": {"type": "json_object"}})
    config = sent(fake)["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert "responseJsonSchema" not in config


# --- embeddings, models, probe -----------------------------------------------------------------


async def test_embeddings(google):
    result = await google.embed("text-embedding-004", {"input": ["alpha", "beta"]})
    assert result["object"] == "list" and result["model"] == "text-embedding-004"
    assert [item["index"] for item in result["data"]] == [0, 1]
    assert result["data"][0]["embedding"] == list(embedding_vector("text-embedding-004", "alpha"))
    assert result["data"][1]["embedding"] == list(embedding_vector("text-embedding-004", "beta"))
    assert all(isinstance(value, float) for value in result["data"][0]["embedding"])
    single = await google.embed("text-embedding-004", {"input": "alpha"})
    assert len(single["data"]) == 1


# --- finish reasons ----------------------------------------------------------------------------


async def test_safety_finish_is_blocked(google, fake):
    fake.fault("google", MODEL, times=1, safety=True)
    error = await fails(errors.Blocked, google.chat(MODEL, user("bad")))
    assert "SAFETY" in error.message and "HARM_CATEGORY_DANGEROUS_CONTENT" in error.message
    assert error.status == 422


async def test_prompt_block_is_blocked(google, fake):
    fake.fault("google", MODEL, times=1, safety="prompt")
    error = await fails(errors.Blocked, google.chat(MODEL, user("bad")))
    assert "block_reason SAFETY" in error.message


async def test_max_tokens_with_text_is_length(google, fake):
    fake.fault("google", MODEL, times=2, finish_reason="MAX_TOKENS", text="partial answer")
    answer = await google.chat(MODEL, user("long"))
    assert answer["choices"][0]["message"]["content"] == "partial answer"
    assert answer["choices"][0]["finish_reason"] == "length"
    chunks = await collect(google.chat_stream(MODEL, user("long")))
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == ["length"]


async def test_max_tokens_without_output_is_truncated(google, fake):
    fake.fault("google", MODEL, times=2, finish_reason="MAX_TOKENS", text="")
    error = await fails(errors.Truncated, google.chat(MODEL, user("long")))
    assert "MAX_TOKENS" in error.message
    _, chunks = await stream_fails(errors.Truncated, google.chat_stream(MODEL, user("long")))
    assert chunks == []


# --- error mapping -----------------------------------------------------------------------------


async def test_rate_limit_retry_info_detail(google, fake):
    body = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED",
                      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}]}}
    fake.fault("google", MODEL, times=1, status=429, body=body)
    error = await fails(errors.RateLimited, google.chat(MODEL, user("x")))
    assert error.retry_after == 3.0


async def test_sdk_does_not_retry(google, fake):
    fake.fault("google", MODEL, times=1, status=503)
    await fails(errors.UpstreamServerError, google.chat(MODEL, user("x")))
    assert fake.stats()["requests"][f"google/{MODEL}"] == 1


@pytest.mark.parametrize("fault", [{"status": 401}, {"status": 403}, {"error_code": "invalid_api_key"},
                                   {"status": 400, "error_code": "invalid_api_key"}])
async def test_auth_errors(google, fake, fault):
    fake.fault("google", MODEL, times=1, **fault)
    await fails(errors.UpstreamAuthError, google.chat(MODEL, user("x")))


async def test_refused_port_is_connect_error_for_embeddings_too():
    provider = make(refused_url())
    try:
        await fails(errors.ConnectError, provider.embed("text-embedding-004", {"input": "x"}))
    finally:
        await provider.aclose()


async def test_connect_timeout_is_separate_from_read_timeout(google):
    request = httpx.Request("POST", "http://example.invalid/", extensions={
        "timeout": {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}})
    await google._set_connect_timeout(request)
    assert request.extensions["timeout"] == {"connect": 1, "read": 5.0, "write": 5.0, "pool": 5.0}


# --- hygiene -------------------------------------------------------------------------------------


async def test_key_never_in_repr_and_client_closes(fake):
    provider = make(fake.url + "/google")
    assert KEY not in repr(provider)
    await provider.chat(MODEL, user("x"))
    http = provider.http
    await provider.aclose()
    assert http.is_closed
    await provider.aclose()  # idempotent


async def test_missing_key_is_auth_error(fake):
    provider = make(fake.url + "/google", api_key=None)
    await fails(errors.UpstreamAuthError, provider.chat(MODEL, user("x")))
    await provider.aclose()


async def test_sdk_sends_through_our_pooled_httpx_client(google):
    # Guards the SDK internals the adapter relies on: no aiohttp path, no SDK retries.
    api_client = google.client._api_client
    assert api_client._async_httpx_client is google.http
    assert not api_client._use_aiohttp()
    assert api_client._http_options.retry_options.attempts == 1


async def test_bad_parameter_value_is_a_request_error(google, fake):
    error = await fails(errors.UpstreamRequestError, google.chat(MODEL, {**user("x"), "temperature": "hot"}))
    assert "temperature" in error.message and error.status == 400
    assert fake.stats()["requests"] == {}


async def test_empty_stream_is_a_success(google, fake):
    fake.fault("google", MODEL, times=1, empty=True)
    assert await collect(google.chat_stream(MODEL, user("x"))) == []


