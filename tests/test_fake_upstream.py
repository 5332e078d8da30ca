"""Tests for fixtures/fake_upstream.py: real HTTP over loopback."""

import asyncio
import base64
import json
import struct
import subprocess
import sys
import time

import httpx
import pytest

from fixtures.fake_upstream import embedding_vector
from tests.helpers import wait_for
from tests.server import ROOT


@pytest.fixture
def client(fake):
    with httpx.Client(base_url=fake.url, timeout=5, trust_env=False) as c:
        yield c


def sse_data(text):
    return [line[6:].rstrip("\r") for line in text.split("\n") if line.startswith("data: ")]


def oa_chat(client, upstream="openrouter", model="anthropic/claude-3-haiku", **kw):
    body = {"model": model, "messages": [{"role": "user", "content": "hi there"}]}
    body.update(kw)
    return client.post(f"/{upstream}/v1/chat/completions", json=body)


def genai_client(fake, prefix="/google"):
    from google import genai
    from google.genai import types

    return genai.Client(api_key="x", http_options=types.HttpOptions(base_url=fake.url + prefix))


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}


# --------------------------------------------------------------------------- OpenAI


def test_openai_chat_plain(client, fake):
    r = oa_chat(client, messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look at this"},
                                     {"type": "image_url", "image_url": {"url": "data:x"}},
                                     {"type": "image_url", "image_url": {"url": "data:y"}}]},
    ])
    assert r.status_code == 200
    d = r.json()
    assert d["object"] == "chat.completion"
    assert d["model"] == "anthropic/claude-3-haiku"
    text = d["choices"][0]["message"]["content"]
    assert text == "Hello from openrouter/anthropic/claude-3-haiku: look at this [images: 2]"
    assert d["choices"][0]["finish_reason"] == "stop"
    assert d["usage"] == {"prompt_tokens": 5, "completion_tokens": len(text.split()),
                          "total_tokens": 5 + len(text.split())}
    # no prefix = upstream "openai"
    d = client.post("/v1/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "yo"}]}).json()
    assert d["choices"][0]["message"]["content"] == "Hello from openai/gpt-4o-mini: yo"
    # Gemini's OpenAI-compatible endpoint
    d = client.post("/google/v1beta/openai/chat/completions", json={
        "model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "yo"}]}).json()
    assert d["choices"][0]["message"]["content"] == "Hello from google/gemini-2.5-flash: yo"
    # openrouter-style base path /api/v1
    d = client.post("/openrouter/api/v1/chat/completions", json={
        "model": "x", "messages": [{"role": "user", "content": "yo"}]}).json()
    assert d["choices"][0]["message"]["content"] == "Hello from openrouter/x: yo"
    st = fake.stats()
    assert st["requests"]["openrouter/anthropic/claude-3-haiku"] == 1
    assert st["last_request"]["openai/gpt-4o-mini"]["messages"][0]["content"] == "yo"
    assert "User-Agent" in st["last_headers"]["openai/gpt-4o-mini"]


def test_openai_chat_stream_include_usage(client):
    r = oa_chat(client, upstream="groq", model="llama-3.1-8b-instant", stream=True,
                stream_options={"include_usage": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    ev = sse_data(r.text)
    assert ev[-1] == "[DONE]"
    chunks = [json.loads(e) for e in ev[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert "".join(content) == "Hello from groq/llama-3.1-8b-instant: hi there"
    assert content[0] == "Hello " and all(len(c.split()) == 1 for c in content)
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 5,
                                   "total_tokens": 7}
    assert all(c["model"] == "llama-3.1-8b-instant" for c in chunks)
    # without include_usage: no usage chunk
    ev = sse_data(oa_chat(client, stream=True).text)
    assert "usage" not in json.loads(ev[-2]) and ev[-1] == "[DONE]"


def test_openai_sdk_against_fake(fake):
    import openai

    with httpx.Client(trust_env=False) as hc:
        oc = openai.OpenAI(base_url=fake.url + "/together/v1", api_key="k", http_client=hc)
        resp = oc.chat.completions.create(model="meta/llama", messages=[
            {"role": "user", "content": "what is the weather?"}], tools=[WEATHER_TOOL])
        call = resp.choices[0].message.tool_calls[0]
        assert resp.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        stream = oc.chat.completions.create(model="m", stream=True, messages=[
            {"role": "user", "content": "hello you"}], stream_options={"include_usage": True})
        parts, usage = [], None
        for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                parts.append(ch.choices[0].delta.content)
            usage = ch.usage or usage
        assert "".join(parts) == "Hello from together/m: hello you"
        assert usage.completion_tokens == 5
        emb = oc.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert emb.data[1].embedding == pytest.approx(
            list(embedding_vector("text-embedding-3-small", "b")))
        assert [m.id for m in oc.models.list()] == ["gpt-4o-mini", "text-embedding-3-small"]


def test_openai_tool_calls_and_tool_result(client, fake):
    d = oa_chat(client, tools=[WEATHER_TOOL, {"type": "function", "function": {"name": "x"}}],
                messages=[{"role": "user", "content": "Weather in Rome?"}]).json()
    msg = d["choices"][0]["message"]
    assert msg["content"] is None and d["choices"][0]["finish_reason"] == "tool_calls"
    tc = msg["tool_calls"][0]
    assert tc["id"].startswith("call_") and tc["type"] == "function"
    assert tc["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    # no "weather" -> plain text; fault forces a call with custom args
    d = oa_chat(client, tools=[WEATHER_TOOL]).json()
    assert d["choices"][0]["message"]["content"].startswith("Hello from")
    fake.fault("openrouter", "anthropic/claude-3-haiku",
               tool_call={"name": "lookup", "arguments": {"q": "cats"}})
    d = oa_chat(client, tools=[WEATHER_TOOL]).json()
    assert d["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "lookup", "arguments": '{"q": "cats"}'}
    # streaming tool call deltas
    ev = sse_data(oa_chat(client, tools=[WEATHER_TOOL], stream=True).text)
    chunks = [json.loads(e) for e in ev[:-1]]
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["index"] == 0 and first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"] == {"name": "lookup", "arguments": ""}
    pieces = [c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
              for c in chunks[1:3]]
    assert len(pieces) == 2 and json.loads("".join(pieces)) == {"q": "cats"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    fake.clear()
    # tool result
    d = oa_chat(client, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [tc]},
        {"role": "tool", "tool_call_id": tc["id"], "content": "sunny, 21C"},
    ]).json()
    assert d["choices"][0]["message"]["content"] == "Tool said: sunny, 21C"


def test_openai_structured_and_fence(client, fake):
    d = oa_chat(client, upstream="openai", model="gpt-4o",
                response_format={"type": "json_object"}).json()
    obj = json.loads(d["choices"][0]["message"]["content"])
    assert obj == {"upstream": "openai", "model": "gpt-4o",
                   "answer": "Hello from openai/gpt-4o: hi there"}
    fake.fault("openai", "gpt-4o", fence_json=True)
    text = oa_chat(client, upstream="openai", model="gpt-4o",
                   response_format={"type": "json_schema", "json_schema": {}}).json()[
        "choices"][0]["message"]["content"]
    assert text.startswith("```json\n") and text.endswith("\n```")
    assert json.loads(text[8:-4])["model"] == "gpt-4o"


def test_openai_embeddings(client):
    d = client.post("/openai/v1/embeddings",
                    json={"model": "text-embedding-3-small", "input": "hello world"}).json()
    assert d["object"] == "list" and d["model"] == "text-embedding-3-small"
    v = d["data"][0]["embedding"]
    assert len(v) == 8 and all(-1 <= x <= 1 for x in v)
    assert d["data"][0] == {"object": "embedding", "index": 0, "embedding": v}
    assert d["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    d2 = client.post("/v1/embeddings", json={"model": "text-embedding-3-small",
                                             "input": ["hello world", "x"],
                                             "encoding_format": "base64"}).json()
    raw = base64.b64decode(d2["data"][0]["embedding"])
    assert list(struct.unpack("<8f", raw)) == v  # deterministic, float32-exact
    assert d2["data"][1]["index"] == 1
    other = client.post("/v1/embeddings", json={"model": "other", "input": "hello world"}).json()
    assert other["data"][0]["embedding"] != v


def test_openai_models_lists(client, fake):
    ids = lambda up: [m["id"] for m in client.get(f"/{up}/v1/models").json()["data"]]  # noqa
    assert ids("openrouter") == ["anthropic/claude-3-haiku", "anthropic/claude-3.5-haiku",
                                 "openai/gpt-4o-mini", "openai/gpt-4o",
                                 "anthropic/claude-3.5-sonnet"]
    assert ids("groq") == ["llama-3.1-8b-instant", "llama-3.3-70b-versatile"]
    assert ids("together") == ["gpt-4o-mini", "text-embedding-3-small"]
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ids("openai")
    assert fake.stats()["requests"]["groq/*"] == 1


# --------------------------------------------------------------------------- Ollama


def test_ollama_probes_tags_show(client):
    r = client.get("/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert client.get("/api/version").json()["version"]
    names = [m["name"] for m in client.get("/api/tags").json()["models"]]
    assert names == ["qwen2.5:7b", "gemma3:12b", "llava:7b", "llama3.1:8b", "nomic-embed-text"]
    caps = lambda m: client.post("/api/show", json={"model": m}).json()["capabilities"]  # noqa
    assert caps("qwen2.5:7b") == ["completion", "tools"]
    assert caps("llama3.1:8b") == ["completion", "tools"]
    assert caps("gemma3:12b") == ["completion"]
    assert caps("llava:7b") == ["completion", "vision"]
    assert caps("nomic-embed-text") == ["embedding"]
    # a second ollama under a prefix
    assert client.get("/ollama2").text == "Ollama is running"
    assert len(client.get("/ollama2/api/tags").json()["models"]) == 5


def test_ollama_chat_plain_and_stream(client, fake):
    body = {"model": "llava:7b", "stream": False, "messages": [
        {"role": "system", "content": "sys prompt"},
        {"role": "user", "content": "what is this", "images": ["aaa", "bbb", "ccc"]}]}
    d = client.post("/api/chat", json=body).json()
    text = "Hello from ollama/llava:7b: what is this [images: 3]"
    assert d["message"] == {"role": "assistant", "content": text}
    assert d["done"] is True and d["done_reason"] == "stop" and d["model"] == "llava:7b"
    assert d["prompt_eval_count"] == 5 and d["eval_count"] == len(text.split())
    # stream defaults to true when absent
    del body["stream"]
    r = client.post("/api/chat", json=body)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert all(not x["done"] for x in lines[:-1])
    assert "".join(x["message"]["content"] for x in lines[:-1]) == text
    assert lines[0]["message"] == {"role": "assistant", "content": "Hello "}
    assert lines[0]["model"] == "llava:7b" and "created_at" in lines[0]
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "stop"
    assert last["message"] == {"role": "assistant", "content": ""}
    assert last["prompt_eval_count"] == 5 and last["eval_count"] == len(text.split())
    # structured output
    d = client.post("/api/chat", json={"model": "qwen2.5:7b", "stream": False, "format": "json",
                                       "messages": [{"role": "user", "content": "q"}]}).json()
    assert json.loads(d["message"]["content"]) == {
        "upstream": "ollama", "model": "qwen2.5:7b", "answer": "Hello from ollama/qwen2.5:7b: q"}


def test_ollama_tool_calls(client, fake):
    tools = [WEATHER_TOOL]
    d = client.post("/api/chat", json={"model": "qwen2.5:7b", "stream": False, "tools": tools,
                                       "messages": [{"role": "user", "content": "weather?"}]}).json()
    assert d["message"]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    r = client.post("/api/chat", json={"model": "qwen2.5:7b", "tools": tools,
                                       "messages": [{"role": "user", "content": "weather?"}]})
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert lines[0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert lines[-1]["done"] is True
    d = client.post("/api/chat", json={"model": "qwen2.5:7b", "stream": False, "tools": tools,
                                       "messages": [{"role": "user", "content": "weather?"},
                                                    d["message"],
                                                    {"role": "tool", "content": "rainy"}]}).json()
    assert d["message"]["content"] == "Tool said: rainy"


def test_ollama_embed(client):
    d = client.post("/api/embed", json={"model": "nomic-embed-text", "input": "a b c"}).json()
    assert d["model"] == "nomic-embed-text" and d["prompt_eval_count"] == 3
    assert d["embeddings"] == [list(embedding_vector("nomic-embed-text", "a b c"))]
    d = client.post("/api/embed", json={"model": "nomic-embed-text", "input": ["x", "y"]}).json()
    assert len(d["embeddings"]) == 2 and d["embeddings"][0] != d["embeddings"][1]


# --------------------------------------------------------------------------- Gemini


def test_gemini_sdk_generate_stream_embed_list(fake):
    from google.genai import types

    gc = genai_client(fake)
    r = gc.models.generate_content(model="gemini-2.5-flash", contents="hi there")
    assert r.text == "Hello from google/gemini-2.5-flash: hi there"
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.usage_metadata.prompt_token_count == 2
    assert r.usage_metadata.candidates_token_count == 5
    assert r.usage_metadata.total_token_count == 7
    st = fake.stats()
    assert st["requests"]["google/gemini-2.5-flash"] == 1
    assert st["last_headers"]["google/gemini-2.5-flash"]["x-goog-api-key"] == "x"

    # image part + structured output
    r = gc.models.generate_content(
        model="gemini-2.0-flash-exp",
        contents=[types.Part.from_bytes(data=b"\x89PNG", mime_type="image/png"), "describe"],
        config=types.GenerateContentConfig(response_mime_type="application/json"))
    assert json.loads(r.text) == {"upstream": "google", "model": "gemini-2.0-flash-exp",
                                  "answer": "Hello from google/gemini-2.0-flash-exp: "
                                            "describe [images: 1]"}

    async def run():
        agc = genai_client(fake)  # async path uses aiohttp
        texts = []
        last = None
        async for ch in await agc.aio.models.generate_content_stream(
                model="gemini-2.5-flash", contents="stream me"):
            texts.append(ch.text)
            last = ch
        emb = await agc.aio.models.embed_content(model="text-embedding-004",
                                                 contents=["a", "b"])
        models = [m.name async for m in await agc.aio.models.list()]
        return texts, last, emb, models

    texts, last, emb, models = asyncio.run(run())
    assert "".join(texts) == "Hello from google/gemini-2.5-flash: stream me"
    assert len(texts) == 5
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata.candidates_token_count == 5
    assert [e.values for e in emb.embeddings] == [
        list(embedding_vector("text-embedding-004", t)) for t in ("a", "b")]
    assert models == ["models/gemini-2.0-flash-exp", "models/gemini-2.5-flash",
                      "models/text-embedding-004"]
    # sync stream (httpx path) and the v1beta api version
    gb = __import__("google.genai", fromlist=["Client"]).Client(
        api_key="x", http_options=types.HttpOptions(base_url=fake.url + "/google",
                                                    api_version="v1beta"))
    assert "".join(c.text for c in gb.models.generate_content_stream(
        model="gemini-2.5-flash", contents="x")) == "Hello from google/gemini-2.5-flash: x"


def test_gemini_no_prefix_is_google(fake):
    gc = genai_client(fake, prefix="")  # keep a reference: Client.__del__ closes its transport
    r = gc.models.generate_content(model="gemini-2.5-flash", contents="hey")
    assert r.text == "Hello from google/gemini-2.5-flash: hey"


def test_gemini_tool_call_and_result(fake):
    from google.genai import types

    gc = genai_client(fake)
    cfg = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[
        types.FunctionDeclaration(name="get_weather", parameters={
            "type": "object", "properties": {"city": {"type": "string"}}})])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    r = gc.models.generate_content(model="gemini-2.5-flash", contents="weather in Oslo?",
                                   config=cfg)
    fc = r.function_calls[0]
    assert fc.name == "get_weather" and fc.args == {"city": "Paris"}
    contents = [
        types.Content(role="user", parts=[types.Part(text="weather in Oslo?")]),
        r.candidates[0].content,
        types.Content(role="user", parts=[types.Part.from_function_response(
            name="get_weather", response={"result": "snowy"})]),
    ]
    r = gc.models.generate_content(model="gemini-2.5-flash", contents=contents, config=cfg)
    assert r.text == "Tool said: snowy"


def test_gemini_faults(fake):
    from google.genai import errors, types

    gc = genai_client(fake)
    fake.fault("google", "gemini-2.5-flash", times=1, safety=True)
    r = gc.models.generate_content(model="gemini-2.5-flash", contents="bad")
    assert r.candidates[0].finish_reason == types.FinishReason.SAFETY
    assert r.candidates[0].content is None and r.text is None
    fake.fault("google", "gemini-2.5-flash", times=1, safety="prompt")
    r = gc.models.generate_content(model="gemini-2.5-flash", contents="bad")
    assert r.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    fake.fault("google", "gemini-2.5-flash", times=1, finish_reason="MAX_TOKENS", text="")
    r = gc.models.generate_content(model="gemini-2.5-flash", contents="long")
    assert r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert r.candidates[0].content.parts is None
    fake.fault("google", "*", times=1, error_code="rate_limit_exceeded",
               headers={"Retry-After": "3"})
    with pytest.raises(errors.ClientError) as ei:
        gc.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert ei.value.code == 429 and ei.value.status == "RESOURCE_EXHAUSTED"
    fake.fault("google", "gemini-2.5-flash", times=1, error_event_after=2)
    with pytest.raises(errors.APIError) as ei:
        for _ in gc.models.generate_content_stream(model="gemini-2.5-flash", contents="x"):
            pass
    assert ei.value.code == 500
    r = gc.models.generate_content(model="gemini-2.5-flash", contents="ok")
    assert r.text == "Hello from google/gemini-2.5-flash: ok"


# --------------------------------------------------------------------------- faults


def test_fault_status_headers_times_and_queue(client, fake):
    fake.fault("openrouter", "anthropic/claude-3-haiku", times=2, status=429,
               headers={"Retry-After": "2"})
    fake.fault("openrouter", "anthropic/claude-3-haiku", times=1, status=503,
               body={"custom": True})
    for _ in range(2):
        r = oa_chat(client)
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"
        assert r.json()["error"]["type"] == "rate_limit_error"
    r = oa_chat(client)
    assert r.status_code == 503 and r.json() == {"custom": True}
    assert oa_chat(client).status_code == 200
    # other models unaffected; listing and stats
    fake.fault("openrouter", "anthropic/claude-3-haiku", status=500)
    assert oa_chat(client, model="openai/gpt-4o").status_code == 200
    assert fake.faults()[0]["fault"] == {"status": 500} and fake.faults()[0]["remaining"] is None
    st = fake.stats()
    assert st["requests"]["openrouter/anthropic/claude-3-haiku"] == 4
    fake.clear()
    assert fake.faults() == [] and fake.stats()["requests"] == {}


def test_fault_error_code_bodies(client, fake):
    fake.fault("openrouter", "*", times=1, error_code="context_length_exceeded")
    r = oa_chat(client)
    assert r.status_code == 400
    e = r.json()["error"]
    assert e["code"] == "context_length_exceeded" and e["type"] == "invalid_request_error"
    assert e["message"].startswith("This model's maximum context length is 8192 tokens")
    for code, status in [("content_policy_violation", 400), ("invalid_api_key", 401),
                         ("rate_limit_exceeded", 429)]:
        fake.fault("openrouter", "*", times=1, error_code=code)
        r = oa_chat(client)
        assert r.status_code == status and r.json()["error"]["code"] == code
    fake.fault("ollama", "*", times=1, error_code="rate_limit_exceeded")
    r = client.post("/api/chat", json={"model": "m", "messages": []})
    assert r.status_code == 429 and isinstance(r.json()["error"], str)
    fake.fault("google", "*", times=1, status=503)
    r = client.post("/google/v1beta/models/g:generateContent", json={"contents": []})
    assert r.status_code == 503
    assert r.json() == {"error": {"code": 503, "message": r.json()["error"]["message"],
                                  "status": "UNAVAILABLE"}}
    # safety on OpenAI / Ollama -> 400
    fake.fault("openrouter", "*", times=1, safety=True)
    r = oa_chat(client)
    assert r.status_code == 400 and r.json()["error"]["code"] == "content_policy_violation"
    fake.fault("ollama", "*", times=1, safety=True)
    r = client.post("/api/chat", json={"model": "m", "messages": []})
    assert r.status_code == 400 and r.json() == {"error": "content blocked by safety policy"}


def test_fault_reset(client, fake):
    fake.fault("openrouter", "*", times=1, reset=True)
    with pytest.raises(httpx.TransportError):
        oa_chat(client)
    assert oa_chat(client).status_code == 200
    assert fake.stats()["disconnects"] == 0


def test_fault_cut_after(client, fake):
    fake.fault("openrouter", "*", times=1, cut_after=2)
    got = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/openrouter/v1/chat/completions", json={
                "model": "m", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            for line in r.iter_lines():
                got.append(line)
    data = [x for x in got if x.startswith("data: ")]
    assert len(data) == 3 and "[DONE]" not in got  # role chunk + 2 content chunks
    # ollama ndjson
    fake.fault("ollama", "*", times=1, cut_after=1)
    got = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/api/chat", json={
                "model": "m", "messages": [{"role": "user", "content": "hi"}]}) as r:
            got.extend(r.iter_lines())
    assert len(got) == 1 and json.loads(got[0])["done"] is False


def test_fault_stall_after(fake):
    fake.fault("openrouter", "*", times=1, stall_after=1)
    got = []
    with httpx.Client(base_url=fake.url, trust_env=False,
                      timeout=httpx.Timeout(5, read=0.3)) as c:
        with pytest.raises(httpx.ReadTimeout):
            with c.stream("POST", "/openrouter/v1/chat/completions", json={
                    "model": "m", "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                for line in r.iter_lines():
                    if line:
                        got.append(line)
    assert len(got) == 2  # role chunk + 1 content chunk
    assert wait_for(lambda: fake.stats()["disconnects"] == 1)
    assert fake.stats()["active"] == 0


def test_fault_malformed_no_done_empty_error_event(client, fake):
    fake.fault("openrouter", "*", times=1, malformed_after=1)
    ev = sse_data(oa_chat(client, stream=True).text)
    assert ev[2] == "{not json" and ev[-1] == "[DONE]"
    good = [json.loads(e) for e in ev[:-1] if e != "{not json"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in good) == \
        "Hello from openrouter/anthropic/claude-3-haiku: hi there"

    fake.fault("openrouter", "*", times=1, no_done=True)
    ev = sse_data(oa_chat(client, stream=True).text)
    assert "[DONE]" not in ev and json.loads(ev[-1])["choices"][0]["finish_reason"] == "stop"

    fake.fault("openrouter", "*", times=1, empty=True)
    assert sse_data(oa_chat(client, stream=True).text) == ["[DONE]"]
    fake.fault("ollama", "*", times=1, empty=True)
    lines = client.post("/api/chat", json={"model": "m", "messages": []}).text.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["done"] is True
    assert json.loads(lines[0])["message"]["content"] == ""

    fake.fault("openrouter", "*", times=1, error_event_after=1)
    ev = sse_data(oa_chat(client, stream=True).text)
    assert json.loads(ev[-1]) == {"error": {"message": "upstream exploded",
                                            "type": "server_error", "code": None}}
    assert len(ev) == 3

    fake.fault("ollama", "*", times=1, malformed_after=1)
    lines = client.post("/api/chat", json={"model": "m", "messages": []}).text.splitlines()
    with pytest.raises(ValueError):
        json.loads(lines[1])
    assert json.loads(lines[-1])["done"] is True


def test_fault_text_finish_reason(client, fake):
    fake.fault("openrouter", "*", times=1, finish_reason="MAX_TOKENS", text="trunc")
    d = oa_chat(client).json()
    assert d["choices"][0]["message"]["content"] == "trunc"
    assert d["choices"][0]["finish_reason"] == "length"
    fake.fault("ollama", "*", times=1, finish_reason="length", text="")
    d = client.post("/api/chat", json={"model": "m", "stream": False, "messages": []}).json()
    assert d["done_reason"] == "length" and d["message"]["content"] == ""


def _streamed_text(client, dialect, messages, model="m"):
    """The text of one streamed answer from the fake, in its dialect."""
    if dialect == "openai":
        events = sse_data(client.post("/openrouter/v1/chat/completions", json={
            "model": model, "stream": True, "messages": messages}).text)
        chunks = [json.loads(e) for e in events if e != "[DONE]"]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    lines = client.post("/api/chat", json={"model": model, "messages": messages}).text.splitlines()
    return "".join(json.loads(x)["message"]["content"] for x in lines)


@pytest.mark.parametrize("dialect", ["openai", "ollama"])
def test_prefilled_assistant_message_is_continued(client, fake, dialect):
    question = [{"role": "user", "content": "tell me a story"}]
    answer = _streamed_text(client, dialect, question)
    assert answer == _streamed_text(client, dialect, question)  # deterministic for the prompt
    words = answer.split(" ")
    for cut in (1, 3, len(words) - 1):
        prefix = " ".join(words[:cut]) + " "  # as a stream cut after `cut` chunks sent it
        rest = _streamed_text(client, dialect, [*question, {"role": "assistant", "content": prefix}])
        assert rest == answer[len(prefix):] and prefix + rest == answer
    # A prefix cut mid-word (or without the trailing space) continues exactly from there.
    prefix = answer[:7]
    assert _streamed_text(client, dialect, [*question, {"role": "assistant", "content": prefix}]) == answer[7:]
    # A fixed answer (`text`) is continued the same way; usage counts what was generated.
    fake.fault("openrouter" if dialect == "openai" else "ollama", "*", times=1, text="one two three four")
    assert _streamed_text(client, dialect, [*question, {"role": "assistant", "content": "one two "}]) == \
        "three four"


def test_prefill_continuation_plain_call_and_usage(client):
    question = [{"role": "user", "content": "hi"}]
    full = oa_chat(client, messages=question).json()
    text = full["choices"][0]["message"]["content"]
    prefix = text.split(" ")[0] + " "
    rest = oa_chat(client, messages=[*question, {"role": "assistant", "content": prefix}]).json()
    assert rest["choices"][0]["message"]["content"] == text[len(prefix):]
    assert rest["usage"]["completion_tokens"] == len(text[len(prefix):].split())
    assert rest["usage"]["prompt_tokens"] == 1 + len(prefix.split())  # the prefill is prompt
    # An assistant message in the middle of the conversation is history, not a prefill.
    history = [*question, {"role": "assistant", "content": prefix}, {"role": "user", "content": "hi"}]
    assert oa_chat(client, messages=history).json()["choices"][0]["message"]["content"] == text


@pytest.mark.parametrize("dialect", ["openai", "ollama"])
def test_fault_refuse_prefill(client, fake, dialect):
    upstream = "openrouter" if dialect == "openai" else "ollama"
    fake.fault(upstream, "*", refuse_prefill=True)  # a model that never continues: stays queued
    question = [{"role": "user", "content": "hi"}]
    prefilled = [*question, {"role": "assistant", "content": "Hello "}]
    path = "/openrouter/v1/chat/completions" if dialect == "openai" else "/api/chat"
    for stream in (True, False):
        refused = client.post(path, json={"model": "m", "stream": stream, "messages": prefilled})
        assert refused.status_code == 400
        error = refused.json()["error"]
        message = error["message"] if dialect == "openai" else error
        assert "prefill" in message
        if dialect == "openai":
            assert error["type"] == "invalid_request_error"
    # Without a trailing assistant message the same model answers as usual.
    assert _streamed_text(client, dialect, question).startswith("Hello from ")
    assert len(fake.faults()) == 1


def test_fault_first_token_delay(fake):
    delay = 0.5
    fake.fault("openrouter", "*", first_token_delay=delay)
    with httpx.Client(base_url=fake.url, trust_env=False, timeout=5) as c:
        t0 = time.monotonic()
        with c.stream("POST", "/openrouter/v1/chat/completions", json={
                "model": "m", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            t_headers = time.monotonic() - t0
            t_first = None
            for line in r.iter_lines():
                if '"content":"Hello' in line:
                    t_first = time.monotonic() - t0
                    break
        assert t_headers < delay / 2
        assert t_first is not None and t_first >= delay * 0.9
        # Ollama NDJSON: headers early too
        fake.fault("ollama", "*", first_token_delay=delay)
        t0 = time.monotonic()
        with c.stream("POST", "/api/chat", json={"model": "m", "messages": []}) as r:
            t_headers = time.monotonic() - t0
            next(r.iter_lines())
            t_first = time.monotonic() - t0
        assert t_headers < delay / 2 and t_first >= delay * 0.9
        # non-stream: whole answer delayed
        t0 = time.monotonic()
        assert c.post("/openrouter/v1/chat/completions", json={
            "model": "m", "messages": []}).status_code == 200
        assert time.monotonic() - t0 >= delay * 0.9


def test_fault_hang_and_delay_disconnects(fake):
    fake.fault("openrouter", "*", times=1, hang=True)
    with httpx.Client(base_url=fake.url, trust_env=False, timeout=0.3) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/openrouter/v1/chat/completions", json={"model": "m", "messages": []})
        assert wait_for(lambda: fake.stats()["disconnects"] == 1)
        fake.fault("openrouter", "*", times=1, delay=5)
        with pytest.raises(httpx.ReadTimeout):
            c.post("/openrouter/v1/chat/completions", json={"model": "m", "messages": []})
        assert wait_for(lambda: fake.stats()["disconnects"] == 2)
        assert fake.stats()["active"] == 0
        fake.fault("openrouter", "*", times=1, delay=0.1)
        assert c.post("/openrouter/v1/chat/completions",
                      json={"model": "m", "messages": []}).status_code == 200
    st = fake.stats()
    assert st["requests"]["openrouter/m"] == 3 and st["disconnects"] == 2


def test_fault_star_model_hits_probes(client, fake):
    fake.fault("ollama", "*", times=2, status=500)
    assert client.get("/api/tags").status_code == 500
    assert client.get("/").status_code == 500
    assert client.get("/api/tags").status_code == 200
    fake.fault("ollama", "*", times=1, hang=True)
    with httpx.Client(base_url=fake.url, trust_env=False, timeout=0.3) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get("/")
    assert wait_for(lambda: fake.stats()["disconnects"] == 1)
    assert fake.stats()["requests"]["ollama/*"] == 4
    # capabilities / show_status only touch /api/show and are not consumed elsewhere
    fake.fault("ollama", "gemma3:12b", times=1, capabilities=["completion", "tools"])
    fake.fault("ollama", "gemma3:12b", times=1, show_status=404)
    assert client.post("/api/chat", json={"model": "gemma3:12b", "stream": False,
                                          "messages": []}).status_code == 200
    assert client.post("/api/show", json={"model": "gemma3:12b"}).json()["capabilities"] == [
        "completion", "tools"]
    r = client.post("/api/show", json={"model": "gemma3:12b"})
    assert r.status_code == 404 and "error" in r.json()
    assert client.post("/api/show", json={"model": "gemma3:12b"}).status_code == 200


def test_control_api_validation(client):
    assert client.post("/_faults", json={"model": "x"}).status_code == 400
    assert client.post("/_faults", json={"upstream": "x", "times": 0, "fault": {}}).status_code == 400
    assert client.post("/_faults", json={"upstream": "x", "fault": {"status": 418}}).json() == {
        "ok": True}
    assert client.delete("/_faults").json() == {"ok": True}


def test_cli_standalone():
    proc = subprocess.Popen([sys.executable, str(ROOT / "fixtures" / "fake_upstream.py"),
                             "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("fake upstream listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert httpx.get(url + "/", trust_env=False).text == "Ollama is running"
    finally:
        proc.terminate()
        proc.wait(5)
