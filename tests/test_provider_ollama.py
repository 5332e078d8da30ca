"""OllamaProvider against the in-repo fake upstream over real loopback HTTP."""
import json

import pytest

from providers import errors
from providers.ollama import OllamaProvider, strip_fence, tool_family_match
from tests.helpers import collect, text_of, unused_port, user

MODEL = "qwen2.5:7b"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def sent(fake, model=MODEL):
    return fake.stats()["last_request"][f"ollama/{model}"]


@pytest.fixture
async def ollama(fake):
    provider = OllamaProvider("ollama", base_url=fake.url, timeout=5, connect_timeout=1)
    yield provider
    await provider.aclose()


# --- text -----------------------------------------------------------------------------


async def test_chat_text(ollama, fake):
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]}
    answer = await ollama.chat(MODEL, body)
    assert answer["object"] == "chat.completion" and answer["model"] == MODEL
    choice = answer["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": f"Hello from ollama/{MODEL}: hi there"}
    assert choice["finish_reason"] == "stop"
    usage = answer["usage"]
    assert usage["prompt_tokens"] == 4 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    request = sent(fake)
    assert request["stream"] is False and request["model"] == MODEL
    assert request["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]


async def test_text_parts_joined(ollama, fake):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "first"},
                                                      {"type": "text", "text": "second"}]}]}
    await ollama.chat(MODEL, body)
    assert sent(fake)["messages"][0]["content"] == "first\nsecond"


async def test_length_finish_reason(ollama, fake):
    fake.fault("ollama", MODEL, times=1, finish_reason="length")
    answer = await ollama.chat(MODEL, user("x"))
    assert answer["choices"][0]["finish_reason"] == "length"


async def test_options_mapping(ollama, fake):
    body = {**user("x"), "temperature": 0.3, "top_p": 0.9, "seed": 42, "max_tokens": 10,
            "max_completion_tokens": 20, "stop": "END", "presence_penalty": 0.5, "frequency_penalty": 0.25,
            "n": 1, "user": "someone"}
    await ollama.chat(MODEL, body)
    assert sent(fake)["options"] == {"temperature": 0.3, "top_p": 0.9, "seed": 42, "num_predict": 20,
                                     "stop": ["END"], "presence_penalty": 0.5, "frequency_penalty": 0.25}
    await ollama.chat(MODEL, {**user("x"), "max_tokens": 10, "stop": ["a", "b"]})
    assert sent(fake)["options"] == {"num_predict": 10, "stop": ["a", "b"]}
    await ollama.chat(MODEL, user("x"))
    assert "options" not in sent(fake) and "format" not in sent(fake) and "tools" not in sent(fake)


# --- streams --------------------------------------------------------------------------


async def test_stream(ollama, fake):
    chunks = await collect(ollama.chat_stream(MODEL, user("stream me please")))
    assert sent(fake)["stream"] is True
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["choices"][0]["delta"]["content"]  # the role arrives with the first content
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert text_of(chunks) == f"Hello from ollama/{MODEL}: stream me please"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 3
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]) == 1


async def test_empty_stream(ollama, fake):
    fake.fault("ollama", MODEL, times=1, empty=True)
    chunks = await collect(ollama.chat_stream(MODEL, user("nothing")))
    assert text_of(chunks) == ""
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]


# --- tools ----------------------------------------------------------------------------


async def test_tool_call_answer(ollama, fake):
    answer = await ollama.chat(MODEL, {**user("What's the weather in Paris?"), "tools": TOOLS})
    assert sent(fake)["tools"] == TOOLS
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert choice["message"]["content"] is None


async def test_tool_call_stream(ollama, fake):
    chunks = await collect(ollama.chat_stream(MODEL, {**user("weather in Paris?"), "tools": TOOLS}))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    calls = [tc for d in deltas for tc in d.get("tool_calls") or ()]
    assert len(calls) == 1 and calls[0]["index"] == 0 and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_choice_none_drops_tools(ollama, fake):
    await ollama.chat(MODEL, {**user("weather in Paris?"), "tools": TOOLS, "tool_choice": "none"})
    assert "tools" not in sent(fake)


async def test_assistant_tool_calls_and_tool_message_in(ollama, fake):
    body = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]}
    answer = await ollama.chat(MODEL, body)
    assert answer["choices"][0]["message"]["content"] == "Tool said: sunny, 21 C"
    messages = sent(fake)["messages"]
    assert messages[1] == {"role": "assistant", "content": "",
                           "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert messages[2] == {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"}


async def test_supports_tools_from_show_and_cached(ollama, fake):
    assert await ollama.supports_tools("qwen2.5:7b") is True
    assert await ollama.supports_tools("gemma3:12b") is False
    assert await ollama.supports_tools("gemma3:12b") is False
    requests = fake.stats()["requests"]
    assert requests["ollama/qwen2.5:7b"] == 1 and requests["ollama/gemma3:12b"] == 1
    assert sent(fake, "gemma3:12b") == {"model": "gemma3:12b"}


async def test_supports_tools_capabilities_fault(ollama, fake):
    fake.fault("ollama", "gemma3:12b", times=1, capabilities=["completion", "tools"])
    assert await ollama.supports_tools("gemma3:12b") is True


async def test_supports_tools_family_fallback_when_show_fails(ollama, fake):
    fake.fault("ollama", "llama3.1:8b", show_status=500)
    fake.fault("ollama", "llama3:8b", show_status=500)
    assert await ollama.supports_tools("llama3.1:8b") is True
    assert await ollama.supports_tools("llama3:8b") is False
    # a failed /api/show is not cached: the next answer wins
    fake.fault("ollama", "gemma3:12b", times=1, show_status=404)
    assert await ollama.supports_tools("gemma3:12b") is False
    fake.fault("ollama", "gemma3:12b", times=1, capabilities=["completion", "tools"])
    assert await ollama.supports_tools("gemma3:12b") is True
    assert await ollama.supports_tools("gemma3:12b") is True  # now cached
    assert fake.stats()["requests"]["ollama/gemma3:12b"] == 2


async def test_supports_tools_fallback_when_ollama_is_down():
    provider = OllamaProvider("ollama", base_url=f"http://127.0.0.1:{unused_port()}", timeout=5, connect_timeout=1)
    try:
        assert await provider.supports_tools("qwen2.5:7b") is True
        assert await provider.supports_tools("gemma3:4b") is False
    finally:
        await provider.aclose()


def test_tool_family_match():
    families = ["llama3.1", "qwen2.5", "mistral"]
    assert tool_family_match("qwen2.5:7b", families)
    assert tool_family_match("llama3.1:8b", families)
    assert tool_family_match("library/mistral-nemo:latest", families)
    assert not tool_family_match("llama3:8b", families)
    assert not tool_family_match("gemma3:4b", families)


# --- vision ---------------------------------------------------------------------------


async def test_vision_data_url_becomes_images(ollama, fake):
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]}]}
    answer = await ollama.chat("llava:7b", body)
    assert answer["choices"][0]["message"]["content"].endswith("[images: 1]")
    assert sent(fake, "llava:7b")["messages"] == [{"role": "user", "content": "what is this?", "images": [PNG]}]


async def test_vision_remote_url_is_capability_error(ollama, fake):
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]}]}
    with pytest.raises(errors.CapabilityError) as info:
        await ollama.chat("llava:7b", body)
    assert "data:image" in info.value.message
    with pytest.raises(errors.CapabilityError):
        await collect(ollama.chat_stream("llava:7b", body))
    assert "ollama/llava:7b" not in fake.stats()["requests"]


# --- structured output -------------------------------------------------------------------


async def test_json_object_format_and_fence_stripped(ollama, fake):
    fake.fault("ollama", MODEL, times=1, fence_json=True)
    answer = await ollama.chat(MODEL, {**user("give json"), "response_format": {"type": "json_object"}})
    assert sent(fake)["format"] == "json"
    content = answer["choices"][0]["message"]["content"]
    assert json.loads(content)["answer"] == f"Hello from ollama/{MODEL}: give json"


async def test_json_schema_format(ollama, fake):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}
    answer = await ollama.chat(MODEL, {**user("give json"), "response_format": response_format})
    assert sent(fake)["format"] == schema
    assert json.loads(answer["choices"][0]["message"]["content"])["model"] == MODEL


async def test_fence_kept_without_structured_request(ollama, fake):
    fake.fault("ollama", MODEL, times=1, text="```python\nprint(1)\n```")
    answer = await ollama.chat(MODEL, user("code please"))
    assert answer["choices"][0]["message"]["content"] == "```python\nprint(1)\n```"


def test_strip_fence():
    assert strip_fence('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_fence('  ```\n{"a": 1}\n```  \n') == '{"a": 1}'
    assert strip_fence('{"a": 1}') == '{"a": 1}'
    assert strip_fence('text ```json\n{}\n``` more') == 'text ```json\n{}\n``` more'


# --- embeddings, models, probe ---------------------------------------------------------


async def test_embeddings_batched(ollama, fake):
    from fixtures.fake_upstream import embedding_vector

    answer = await ollama.embed("nomic-embed-text", {"input": ["alpha", "beta gamma"], "encoding_format": "base64"})
    assert answer["object"] == "list" and answer["model"] == "nomic-embed-text"
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert answer["data"][1]["embedding"] == list(embedding_vector("nomic-embed-text", "beta gamma"))
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert fake.stats()["requests"]["ollama/nomic-embed-text"] == 1
    assert sent(fake, "nomic-embed-text") == {"model": "nomic-embed-text", "input": ["alpha", "beta gamma"]}
    single = await ollama.embed("nomic-embed-text", {"input": "alpha"})
    assert single["data"][0]["embedding"] == answer["data"][0]["embedding"]


# --- error mapping --------------------------------------------------------------------


async def test_model_not_found_is_request_error(ollama, fake):
    fake.fault("ollama", "nope:1b", times=1, error_code="model_not_found")
    with pytest.raises(errors.UpstreamRequestError) as info:
        await ollama.chat("nope:1b", user("x"))
    assert info.value.status == 404 and "not found" in info.value.message


async def test_pooled_client_reuses_connection(ollama, fake):
    await ollama.chat(MODEL, user("one"))
    client = ollama.client
    await collect(ollama.chat_stream(MODEL, user("two")))
    await ollama.embed("nomic-embed-text", {"input": ["three"]})
    await ollama.list_models()
    await ollama.supports_tools("llava:7b")
    assert ollama.client is client
    assert fake.stats()["connections"] == 1  # one keep-alive connection, as the upstream saw it
