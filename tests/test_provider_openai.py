"""OpenAICompatProvider against the in-repo fake upstream over real loopback HTTP."""
import pytest

from providers import errors
from providers.base import has_content
from providers.openai_compat import OpenAICompatProvider
from tests.helpers import collect, text_of, user

KEY = "sk-fake"
MODEL = "llama-3.1-8b-instant"


@pytest.fixture
async def groq(fake):
    provider = OpenAICompatProvider("groq", base_url=f"{fake.url}/groq/v1", api_key=KEY, timeout=5,
                                    connect_timeout=1)
    yield provider
    await provider.aclose()


# --- plain calls ----------------------------------------------------------------------


async def test_chat_text_and_auth_header(groq, fake):
    body = user("hi there")
    answer = await groq.chat(MODEL, body)
    assert answer["choices"][0]["message"]["content"] == f"Hello from groq/{MODEL}: hi there"
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["total_tokens"] > 0
    assert body == user("hi there")  # the caller's body is not mutated
    stats = fake.stats()
    assert stats["last_headers"][f"groq/{MODEL}"]["Authorization"] == f"Bearer {KEY}"
    sent = stats["last_request"][f"groq/{MODEL}"]
    assert sent["model"] == MODEL and "stream" not in sent and "stream_options" not in sent


async def test_passes_fields_through(groq, fake):
    body = {**user("x"), "max_completion_tokens": 50, "temperature": 0.2, "seed": 7, "tool_choice": "auto",
            "stream": True, "stream_options": {"include_usage": True}, "user": "u1"}
    await groq.chat(MODEL, {**body, "model": "mana/fast-text"})
    sent = fake.stats()["last_request"][f"groq/{MODEL}"]
    assert sent["model"] == MODEL
    assert sent["max_completion_tokens"] == 50 and sent["temperature"] == 0.2 and sent["seed"] == 7
    assert sent["user"] == "u1" and "stream" not in sent and "stream_options" not in sent


async def test_repr_hides_key(groq):
    assert KEY not in repr(groq)
    await groq.list_models()
    assert KEY not in repr(groq.client.headers)


# --- streams --------------------------------------------------------------------------


async def test_stream_chunks_and_usage(groq, fake):
    chunks = await collect(groq.chat_stream(MODEL, user("stream me")))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert text_of(chunks) == f"Hello from groq/{MODEL}: stream me"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    sent = fake.stats()["last_request"][f"groq/{MODEL}"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_stream_tool_call_deltas_pass_through(groq, fake):
    body = {**user("what is the weather in Paris?"),
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}
    chunks = await collect(groq.chat_stream(MODEL, body))
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert "".join(tc["function"].get("arguments", "") for tc in calls) == '{"city": "Paris"}'
    assert any(has_content(c) for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert fake.stats()["last_request"][f"groq/{MODEL}"]["tools"] == body["tools"]


async def test_chat_tools_both_ways(groq, fake):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    answer = await groq.chat(MODEL, {**user("weather in Paris?"), "tools": tools})
    message = answer["choices"][0]["message"]
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    call = message["tool_calls"][0]
    follow_up = {"tools": tools, "messages": [
        {"role": "user", "content": "weather in Paris?"},
        message,
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
    ]}
    answer = await groq.chat(MODEL, follow_up)
    assert answer["choices"][0]["message"]["content"] == "Tool said: sunny"
    assert fake.stats()["last_request"][f"groq/{MODEL}"]["messages"][1]["tool_calls"] == [call]


async def test_stream_without_done_ends_cleanly(groq, fake):
    fake.fault("groq", MODEL, times=1, no_done=True)
    chunks = await collect(groq.chat_stream(MODEL, user("bye")))
    assert text_of(chunks) == f"Hello from groq/{MODEL}: bye"
    assert chunks[-1]["usage"]


async def test_empty_stream_is_no_error(groq, fake):
    fake.fault("groq", MODEL, times=1, empty=True)
    assert await collect(groq.chat_stream(MODEL, user("nothing"))) == []


async def test_stream_error_event_before_content_raises(groq, fake):
    fake.fault("groq", MODEL, times=1, error_event_after=0)
    with pytest.raises(errors.UpstreamServerError):
        await collect(groq.chat_stream(MODEL, user("x")))


# --- error mapping --------------------------------------------------------------------


async def test_429_carries_retry_after(groq, fake):
    fake.fault("groq", MODEL, times=1, error_code="rate_limit_exceeded", headers={"Retry-After": "2"})
    with pytest.raises(errors.RateLimited) as info:
        await groq.chat(MODEL, user("x"))
    assert info.value.retry_after == 2.0 and "Rate limit reached" in info.value.message


async def test_content_policy_is_blocked(groq, fake):
    fake.fault("groq", MODEL, times=1, error_code="content_policy_violation")
    with pytest.raises(errors.Blocked) as info:
        await groq.chat(MODEL, user("x"))
    assert "safety system" in info.value.message


async def test_other_400_carries_upstream_message(groq, fake):
    fake.fault("groq", MODEL, times=1, status=400, body={"error": {"message": "temperature is too high",
                                                                   "type": "invalid_request_error",
                                                                   "param": "temperature", "code": None}})
    with pytest.raises(errors.UpstreamRequestError) as info:
        await groq.chat(MODEL, user("x"))
    assert "temperature is too high" in info.value.message
    assert info.value.status == 400 and info.value.action == errors.PROPAGATE


async def test_text_error_body(groq, fake):
    fake.fault("groq", MODEL, times=1, status=502, body="Bad Gateway from the edge")
    with pytest.raises(errors.UpstreamServerError) as info:
        await groq.chat(MODEL, user("x"))
    assert "Bad Gateway from the edge" in info.value.message and info.value.reason == "http_502"


async def test_non_json_200_is_protocol_error(groq, fake):
    fake.fault("groq", MODEL, times=1, status=200, body="<html>oops</html>")
    with pytest.raises(errors.ProtocolError):
        await groq.chat(MODEL, user("x"))


# --- embeddings, models, probe, pooling -------------------------------------------------


async def test_embeddings_batched_floats(groq, fake):
    from fixtures.fake_upstream import embedding_vector

    answer = await groq.embed("text-embedding-3-small", {"input": ["a", "b c"], "encoding_format": "base64"})
    assert [item["embedding"] for item in answer["data"]] == [
        list(embedding_vector("text-embedding-3-small", "a")), list(embedding_vector("text-embedding-3-small", "b c"))
    ]
    stats = fake.stats()
    assert stats["requests"]["groq/text-embedding-3-small"] == 1
    assert "encoding_format" not in stats["last_request"]["groq/text-embedding-3-small"]


async def test_supports_tools(groq):
    assert await groq.supports_tools(MODEL) is True


async def test_probe_auth_failure(groq, fake):
    fake.fault("groq", "*", times=1, error_code="invalid_api_key")
    with pytest.raises(errors.UpstreamAuthError):
        await groq.probe()


async def test_pooled_client_reuses_connection(groq, fake):
    await groq.chat(MODEL, user("one"))
    client = groq.client
    await collect(groq.chat_stream(MODEL, user("two")))
    await groq.embed("text-embedding-3-small", {"input": "three"})
    await groq.list_models()
    assert groq.client is client
    assert fake.stats()["connections"] == 1  # one keep-alive connection, as the upstream saw it
