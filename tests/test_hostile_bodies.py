"""Hostile and malformed input against a real gateway process: every case is a 4xx in the
OpenAI envelope (or works), never a 500, and the server log never holds a traceback.

One JSON parser with one set of limits (manallm.jsonbody) for every body; typed checks of
what the adapters index into (routing.schema); model names each provider can send
(providers.model_names); WebSocket handshakes refused; X-Request-ID bounded.
"""
import json
import socket

import httpx
import openai
import pytest

from manallm.jsonbody import MAX_DEPTH
from tests.helpers import assert_error, assert_no_traceback, assert_sdk_error, content_of, sdk, sse_events
from tests.server import module_gateway

MAX_REQUEST_BYTES = 65536
ADMIN = {"Authorization": "Bearer hostile-admin"}
gw = module_gateway("hostile", MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES), MANA_LLM_ADMIN_KEY="hostile-admin")

# One model per adapter path: Ollama, OpenAI-compatible, Gemini (each tool-capable).
MODELS = ["ollama/llama3.1:8b", "openai/gpt-4o-mini", "google/gemini-2.5-flash"]
CHAIN = {"description": "x", "chain": ["ollama/llama3.1:8b"]}


@pytest.fixture(autouse=True)
def no_traceback_in_server_log(gw):
    yield
    assert_no_traceback(gw.logs())


def deep(levels):
    """A JSON value of exactly ``levels`` nested containers (objects and arrays in turn)."""
    value = {}
    for level in range(levels - 1):
        value = [value] if level % 2 == 0 else {"k": value}
    return value


def user(text="hi"):
    return [{"role": "user", "content": text}]


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def tool_history(arguments):
    return [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 20}'}]


def forwarded(field, depth):
    """A chat body (model left to the caller) whose ``field`` makes the whole body
    ``depth`` levels deep; and the param a too-deep body is refused with."""
    if field == "metadata":
        return {"messages": user(), "metadata": {"k": deep(depth - 2)}}, "metadata"
    if field == "unknown":
        return {"messages": user(), "x_vendor_extension": deep(depth - 1)}, "x_vendor_extension"
    if field == "stream_options":
        return {"messages": user(), "stream_options": {"include_usage": True, "x": deep(depth - 2)}}, "stream_options"
    if field == "tool_choice":
        return {"messages": user(), "tools": [TOOL],
                "tool_choice": {"type": "function", "function": {"name": "get_weather", "x": deep(depth - 3)}}}, \
            "tool_choice"
    if field == "tool_parameters":
        tool = {"type": "function", "function": {"name": "get_weather",
                                                 "parameters": {"type": "object", "x": deep(depth - 5)}}}
        return {"messages": user(), "tools": [tool]}, "tools"
    if field == "json_schema":
        return {"messages": user(), "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "x": deep(depth - 4)}}}}, \
            "response_format"
    if field == "tool_call_arguments":  # JSON inside a string: its own depth, same limit
        return ({"messages": tool_history(json.dumps({"k": deep(depth - 1)})), "tools": [TOOL]},
                "messages[1].tool_calls[0].function.arguments")
    raise AssertionError(field)


FIELDS = ["metadata", "unknown", "stream_options", "tool_choice", "tool_parameters", "json_schema",
          "tool_call_arguments"]


# --- 1. nesting depth: one limit at parse time that every later stage handles ----------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("field", FIELDS)
def test_a_body_at_the_depth_limit_is_served_on_every_path(http, model, field):
    body, _ = forwarded(field, MAX_DEPTH)
    response = http.post("/v1/chat/completions", json={**body, "model": model})
    assert response.status_code == 200, response.text
    assert response.json()["choices"]


@pytest.mark.parametrize("model", MODELS)
def test_a_stream_at_the_depth_limit_is_served(http, model):
    body, _ = forwarded("tool_parameters", MAX_DEPTH)
    response = http.post("/v1/chat/completions", json={**body, "model": model, "stream": True})
    assert content_of(sse_events(response))


@pytest.mark.parametrize("field", FIELDS)
def test_one_level_deeper_is_a_400_naming_the_field(http, field):
    body, param = forwarded(field, MAX_DEPTH + 1)
    response = http.post("/v1/chat/completions", json={**body, "model": "openai/gpt-4o-mini"})
    assert_error(response, 400, "invalid_request_error", param=param)


@pytest.mark.parametrize("levels", [200, 256, 600, 1023, 5000])
def test_very_deep_bodies_are_400_on_every_endpoint(http, levels):
    raw = "[" * levels + "]" * levels
    nested = '{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "metadata": ' \
             + raw + "}"
    for path, content in (("/v1/chat/completions", nested), ("/v1/embeddings", raw),
                          ("/v1/aliases/mana/deep", raw), ("/v1/aliases/mana/deep", "[" * levels)):
        response = http.request("PUT" if "aliases" in path else "POST", path, content=content,
                                headers={**ADMIN, "Content-Type": "application/json"})
        assert_error(response, 400, "invalid_request_error")


def test_the_alias_api_parses_with_the_same_parser(http):
    deep_body = {"description": "x", "chain": ["ollama/llama3.1:8b"], "extra": deep(MAX_DEPTH)}
    response = http.put("/v1/aliases/mana/deep", json=deep_body, headers=ADMIN)
    assert_error(response, 400, "invalid_request_error", param="extra")
    broken = http.put("/v1/aliases/mana/deep", content=b'{"chain": [', headers=ADMIN)
    assert_error(broken, 400, "invalid_request_error", code="invalid_json")
    reset = http.post("/v1/health/ollama/reset", content="[" * 2000, headers={**ADMIN, "Content-Type": "application/json"})
    assert reset.status_code in (200, 400), reset.text  # the body is ignored, or refused; never a 500


# --- 3-5. typed fields the adapters index into -----------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("role", [["user"], {"r": 1}, 3, None, "wizard"])
def test_a_role_that_is_not_a_known_string_is_a_400(http, model, role):
    response = http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": role, "content": "hi"}]})
    assert_error(response, 400, "invalid_request_error", param="messages[0].role")


BAD_TOOL_CALLS = [
    ("a string", "call it", "messages[1].tool_calls"),
    ("numbers", [1, 2], "messages[1].tool_calls[0]"),
    ("no function", [{"id": "call_1", "type": "function"}], "messages[1].tool_calls[0].function"),
    ("function a string", [{"id": "call_1", "function": "get_weather"}], "messages[1].tool_calls[0].function"),
    ("name not a string", [{"id": "call_1", "function": {"name": ["x"], "arguments": "{}"}}],
     "messages[1].tool_calls[0].function.name"),
    ("arguments not a string", [{"id": "call_1", "function": {"name": "f", "arguments": {"a": 1}}}],
     "messages[1].tool_calls[0].function.arguments"),
    ("id a list", [{"id": ["x"], "function": {"name": "f", "arguments": "{}"}}], "messages[1].tool_calls[0].id"),
]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case, calls, param", BAD_TOOL_CALLS, ids=[case[0] for case in BAD_TOOL_CALLS])
def test_malformed_assistant_tool_calls_are_a_400_on_every_path(http, model, case, calls, param):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": calls}]
    for stream in (False, True):
        response = http.post("/v1/chat/completions", json={"model": model, "messages": messages, "stream": stream})
        assert_error(response, 400, "invalid_request_error", param=param)


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": "get_weather"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": "get_weather"}}, "tool_choice"),
    ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": [1]}}}, "response_format.json_schema.schema"),
    ({"stop": [1, 2]}, "stop"),
    ({"n": "2"}, "n"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 7}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "user", "content": [{"type": "input_text", "text": ["x"]}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": "x"}]}]},
     "messages[0].content[0].input_audio"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": "x"}]}]}, "messages[0].content[0].file"),
    ({"messages": [{"role": "tool", "tool_call_id": ["x"], "content": "20"}]}, "messages[0].tool_call_id"),
])
@pytest.mark.parametrize("model", MODELS)
def test_other_typed_fields_are_checked_before_routing(http, model, extra, param):
    body = {"model": model, "messages": user(), **extra}
    assert_error(http.post("/v1/chat/completions", json=body), 400, "invalid_request_error", param=param)


@pytest.mark.parametrize("model", ["google/text-embedding-004", "ollama/nomic-embed-text", "openai/text-embedding-3-small"])
@pytest.mark.parametrize("dimensions", ["abc", 1.5, 0, -3, True, [8], {"n": 8}])
def test_embedding_dimensions_must_be_a_positive_integer(http, model, dimensions):
    response = http.post("/v1/embeddings", json={"model": model, "input": "hi", "dimensions": dimensions})
    assert_error(response, 400, "invalid_request_error", param="dimensions")


def test_embedding_dimensions_that_are_fine_are_served(http):
    response = http.post("/v1/embeddings", json={"model": "google/text-embedding-004", "input": "hi", "dimensions": 8})
    assert response.status_code == 200, response.text


# --- 6. model names each provider can send -------------------------------------------------


BAD_GOOGLE_NAMES = ["gemini?alt=x", "gemini&key=y", "../../v1/files", "models/../x", "gem ini", "gemini#x",
                    "gemini%2F..", "models//x"]


@pytest.mark.parametrize("name", BAD_GOOGLE_NAMES)
def test_google_model_names_that_are_not_path_safe_are_a_400(gw, http, name):
    model = f"google/{name}"
    assert_error(http.post("/v1/chat/completions", json={"model": model, "messages": user()}),
                 400, "invalid_request_error", param="model")
    assert_error(http.post("/v1/chat/completions", json={"model": model, "messages": user(), "stream": True}),
                 400, "invalid_request_error", param="model")
    assert_error(http.post("/v1/embeddings", json={"model": model, "input": "hi"}),
                 400, "invalid_request_error", param="model")
    with pytest.raises(openai.BadRequestError) as info:
        sdk(gw).chat.completions.create(model=model, messages=user())
    assert_sdk_error(info, openai.BadRequestError, 400, "invalid_request_error", param="model")
    alias = http.put("/v1/aliases/mana/bad-google", json={"chain": ["ollama/llama3.1:8b", model]}, headers=ADMIN)
    assert_error(alias, 400, "invalid_request_error", param="chain[1]")


def test_the_same_characters_are_fine_for_body_carried_model_names(http):
    # Ollama and the OpenAI-compatible dialects send the name in a JSON body, not a URL.
    response = http.post("/v1/chat/completions", json={"model": "openai/org/model?x&y", "messages": user()})
    assert response.status_code == 200, response.text
    assert response.headers["X-Mana-LLM-Resolved"] == "openai/org/model?x&y"


# --- 9, 10. body size: one limit, with or without Content-Length ------------------------------


def chunked(data: bytes):
    """A generator body: httpx sends it chunked, with no Content-Length."""
    def parts():
        for start in range(0, len(data), 8192):
            yield data[start:start + 8192]
    return parts()


def test_a_chunked_alias_put_is_read(http):
    body = json.dumps({"description": "chunked", "chain": ["ollama/llama3.1:8b"]}).encode()
    response = http.put("/v1/aliases/mana/chunked", content=chunked(body), headers=ADMIN)
    assert response.status_code in (200, 201), response.text
    assert http.get("/v1/aliases/mana/chunked").json()["description"] == "chunked"


def test_a_chunked_chat_is_read(http):
    body = json.dumps({"model": "openai/gpt-4o-mini", "messages": user("chunks")}).encode()
    response = http.post("/v1/chat/completions", content=chunked(body))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("send_length", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("method, path", [("PUT", "/v1/aliases/mana/big"), ("POST", "/v1/chat/completions"),
                                          ("POST", "/v1/embeddings")])
def test_a_body_over_the_limit_is_a_413_envelope(http, send_length, method, path):
    data = json.dumps({"description": "x" * (MAX_REQUEST_BYTES + 10), "chain": ["ollama/llama3.1:8b"],
                       "model": "openai/gpt-4o-mini", "messages": user(), "input": "hi"}).encode()
    response = http.request(method, path, content=data if send_length else chunked(data),
                            headers={**ADMIN, "Content-Type": "application/json"})
    error = assert_error(response, 413, "invalid_request_error")
    assert str(MAX_REQUEST_BYTES) in error["message"]
    assert response.headers["X-Request-ID"]


def test_a_body_just_under_the_limit_is_served(http):
    body = {"model": "openai/gpt-4o-mini", "messages": user("x" * (MAX_REQUEST_BYTES - 200))}
    assert http.post("/v1/chat/completions", content=chunked(json.dumps(body).encode())).status_code == 200


# --- 11. WebSocket upgrades ----------------------------------------------------------------------


def raw_request(gw, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as conn:
        conn.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize("path", ["/", "/v1/chat/completions", "/admin/", "/health"])
def test_a_websocket_upgrade_is_refused_cleanly(gw, http, path):
    answer = raw_request(gw, (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert http.get("/health").status_code == 200


# --- 12. X-Request-ID ----------------------------------------------------------------------------


def test_a_printable_request_id_is_echoed(http):
    response = http.get("/health", headers={"X-Request-ID": "req:abc-1.2_3/x"})
    assert response.headers["X-Request-ID"] == "req:abc-1.2_3/x"


@pytest.mark.parametrize("value", ["x" * 8192, "a b", "x" * 129])
def test_an_unfit_request_id_is_replaced(gw, http, value):
    response = http.post("/v1/chat/completions", json={"model": "openai/gpt-4o-mini", "messages": user()},
                         headers={"X-Request-ID": value})
    assert len(response.headers["X-Request-ID"]) == 32
    assert value not in gw.logs()


def test_a_request_id_with_control_characters_is_neither_echoed_nor_logged(gw):
    answer = raw_request(gw, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: evil\x1b[31mred\x07\r\n"
                             b"Connection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n")[0]
    assert b"\x1b" not in head and b"\x07" not in head
    assert "\x1b" not in gw.logs() and "evil" not in gw.logs()


def test_the_gateway_is_still_healthy(http):
    assert http.get("/health").status_code == 200
    assert http.post("/v1/chat/completions", json={"model": "openai/gpt-4o-mini", "messages": user()}).status_code == 200


def test_httpx_sends_streams_chunked():
    """The chunked cases above rely on httpx sending a generator body without a length."""
    request = httpx.Request("POST", "http://x/", content=chunked(b"abc"))
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
