"""OpenAICompatProvider against the in-repo fake upstream over real loopback HTTP."""
import asyncio

import pytest

from providers import errors
from providers.base import has_content
from providers.openai_compat import OpenAICompatProvider
from tests.adapters import collect, eventually, text_of, unused_port, user

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


async def test_stream_skips_malformed_event(groq, fake, caplog):
    fake.fault("groq", MODEL, times=1, malformed_after=1)
    chunks = await collect(groq.chat_stream(MODEL, user("a b c")))
    assert text_of(chunks) == f"Hello from groq/{MODEL}: a b c"
    assert "malformed" in caplog.text


async def test_stream_without_done_ends_cleanly(groq, fake):
    fake.fault("groq", MODEL, times=1, no_done=True)
    chunks = await collect(groq.chat_stream(MODEL, user("bye")))
    assert text_of(chunks) == f"Hello from groq/{MODEL}: bye"
    assert chunks[-1]["usage"]


async def test_empty_stream_is_no_error(groq, fake):
    fake.fault("groq", MODEL, times=1, empty=True)
    assert await collect(groq.chat_stream(MODEL, user("nothing"))) == []


async def test_stream_cut_mid_way_raises_protocol_error(groq, fake):
    fake.fault("groq", MODEL, times=1, cut_after=2)
    received = []
    with pytest.raises(errors.ProtocolError):
        async for chunk in groq.chat_stream(MODEL, user("one two three four five")):
            received.append(chunk)
    assert len(received) == 3  # the role chunk, then two content chunks
    assert not any(c["choices"] and c["choices"][0]["finish_reason"] for c in received)


async def test_stream_error_event_raises(groq, fake):
    fake.fault("groq", MODEL, times=1, error_event_after=1)
    received = []
    with pytest.raises(errors.UpstreamServerError) as info:
        async for chunk in groq.chat_stream(MODEL, user("one two three")):
            received.append(chunk)
    assert len(received) == 2 and "upstream exploded" in info.value.message


async def test_stream_error_event_before_content_raises(groq, fake):
    fake.fault("groq", MODEL, times=1, error_event_after=0)
    with pytest.raises(errors.UpstreamServerError):
        await collect(groq.chat_stream(MODEL, user("x")))


async def test_stream_http_error_raised_from_first_anext(groq, fake):
    fake.fault("groq", MODEL, times=1, status=503)
    stream = groq.chat_stream(MODEL, user("x"))
    with pytest.raises(errors.UpstreamServerError) as info:
        await stream.__anext__()
    assert info.value.reason == "http_503"


async def test_closing_a_stream_early_cancels_upstream(groq, fake):
    fake.fault("groq", MODEL, times=1, stall_after=1)
    stream = groq.chat_stream(MODEL, user("one two three"))
    assert (await stream.__anext__())["choices"][0]["delta"]["role"] == "assistant"
    await stream.__anext__()
    await stream.aclose()
    assert await eventually(lambda: fake.stats()["disconnects"] >= 1)
    assert fake.stats()["active"] == 0


async def test_cancelling_a_stream_consumer_cancels_upstream(groq, fake):
    fake.fault("groq", MODEL, times=1, stall_after=1)
    got_one = asyncio.Event()

    async def consume():
        async for _ in groq.chat_stream(MODEL, user("one two three")):
            got_one.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_one.wait(), 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await eventually(lambda: fake.stats()["disconnects"] >= 1)


# --- error mapping --------------------------------------------------------------------


async def test_500_is_upstream_server_error(groq, fake):
    fake.fault("groq", MODEL, times=1, status=500)
    with pytest.raises(errors.UpstreamServerError) as info:
        await groq.chat(MODEL, user("x"))
    assert info.value.reason == "http_500" and info.value.action == errors.RETRY


async def test_429_carries_retry_after(groq, fake):
    fake.fault("groq", MODEL, times=1, error_code="rate_limit_exceeded", headers={"Retry-After": "2"})
    with pytest.raises(errors.RateLimited) as info:
        await groq.chat(MODEL, user("x"))
    assert info.value.retry_after == 2.0 and "Rate limit reached" in info.value.message


async def test_401_is_upstream_auth_error_without_key(groq, fake):
    fake.fault("groq", MODEL, times=1, error_code="invalid_api_key")
    with pytest.raises(errors.UpstreamAuthError) as info:
        await groq.chat(MODEL, user("x"))
    assert KEY not in str(info.value) and KEY not in info.value.message


async def test_context_length_exceeded(groq, fake):
    fake.fault("groq", MODEL, times=1, error_code="context_length_exceeded")
    with pytest.raises(errors.ContextLengthExceeded):
        await groq.chat(MODEL, user("x"))


async def test_content_policy_is_blocked(groq, fake):
    fake.fault("groq", MODEL, times=1, error_code="content_policy_violation")
    with pytest.raises(errors.Blocked) as info:
        await groq.chat(MODEL, user("x"))
    assert "safety system" in info.value.message


async def test_safety_fault_is_blocked_on_streams_too(groq, fake):
    fake.fault("groq", MODEL, times=1, safety=True)
    with pytest.raises(errors.Blocked):
        await collect(groq.chat_stream(MODEL, user("x")))


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


async def test_reset_is_protocol_error(groq, fake):
    fake.fault("groq", MODEL, times=1, reset=True)
    with pytest.raises(errors.ProtocolError):
        await groq.chat(MODEL, user("x"))


async def test_reset_before_stream_is_protocol_error(groq, fake):
    fake.fault("groq", MODEL, times=1, reset=True)
    with pytest.raises(errors.ProtocolError):
        await collect(groq.chat_stream(MODEL, user("x")))


async def test_non_json_200_is_protocol_error(groq, fake):
    fake.fault("groq", MODEL, times=1, status=200, body="<html>oops</html>")
    with pytest.raises(errors.ProtocolError):
        await groq.chat(MODEL, user("x"))


async def test_refused_connection_is_connect_error():
    provider = OpenAICompatProvider("groq", base_url=f"http://127.0.0.1:{unused_port()}/v1", api_key=KEY,
                                    timeout=5, connect_timeout=1)
    try:
        with pytest.raises(errors.ConnectError) as info:
            await provider.chat(MODEL, user("x"))
        assert info.value.breaker == "provider" and KEY not in info.value.message
        with pytest.raises(errors.ConnectError):
            await collect(provider.chat_stream(MODEL, user("x")))
    finally:
        await provider.aclose()


async def test_hang_is_timeout(fake):
    provider = OpenAICompatProvider("groq", base_url=f"{fake.url}/groq/v1", api_key=KEY, timeout=0.3,
                                    connect_timeout=1)
    fake.fault("groq", MODEL, times=1, hang=True)
    try:
        with pytest.raises(errors.Timeout):
            await provider.chat(MODEL, user("x"))
    finally:
        await provider.aclose()


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


async def test_list_models_and_probe(groq, fake):
    assert await groq.list_models() == ["llama-3.1-8b-instant", "llama-3.3-70b-versatile"]
    assert await groq.probe() is None
    assert await groq.supports_tools(MODEL) is True


async def test_probe_failures(groq, fake):
    fake.fault("groq", "*", times=1, status=503)
    with pytest.raises(errors.UpstreamServerError):
        await groq.probe()
    fake.fault("groq", "*", times=1, error_code="invalid_api_key")
    with pytest.raises(errors.UpstreamAuthError):
        await groq.probe()
    dead = OpenAICompatProvider("groq", base_url=f"http://127.0.0.1:{unused_port()}/v1", timeout=1,
                                connect_timeout=1)
    try:
        with pytest.raises(errors.ConnectError):
            await dead.probe()
    finally:
        await dead.aclose()


async def test_pooled_client_reuses_connection(groq, fake):
    await groq.chat(MODEL, user("one"))
    client = groq.client
    await collect(groq.chat_stream(MODEL, user("two")))
    await groq.embed("text-embedding-3-small", {"input": "three"})
    await groq.list_models()
    assert groq.client is client
    assert fake.stats()["connections"] == 1  # one keep-alive connection, as the upstream saw it
