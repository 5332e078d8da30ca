"""Validation of OpenAI request bodies (README#endpoints): every 400 names the bad field.

Only what the gateway or an adapter relies on is checked; any other field an OpenAI
client sends is accepted and left for the upstream (or ignored).
"""
import orjson
from django.core.exceptions import RequestDataTooBig

from manallm.errors import APIError, InvalidRequest
from providers.openai_request import image_url, input_strings

from .validators import unprintable

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
NUMBER_RANGES = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
}


def parse_json(request, max_bytes):
    """The request body as a JSON object, or the right 400/413."""
    length = request.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise too_large(max_bytes)
    try:
        body = request.body
    except RequestDataTooBig:  # a chunked body (no Content-Length) over the limit
        raise too_large(max_bytes) from None
    if len(body) > max_bytes:
        raise too_large(max_bytes)
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = "is not UTF-8" if "utf-8" in str(exc).lower() else f"is not valid JSON ({exc})"
        raise InvalidRequest(f"The request body {reason}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def too_large(max_bytes):
    return APIError(f"The request body is larger than {max_bytes} bytes.", status=413,
                    type="invalid_request_error", code="request_too_large")


def _fail(param, message):
    raise InvalidRequest(f"{message} ({param})", param=param, code="invalid_value")


def _check_type(body, name, types, label, param=None):
    value = body.get(name)
    if value is None:
        return None
    # bool is an int in Python, but `true` is not a number in JSON.
    is_bool_where_not_wanted = isinstance(value, bool) and types is not bool
    if is_bool_where_not_wanted or not isinstance(value, types):
        _fail(param or name, f"'{param or name}' must be {label}")
    return value


MAX_MODEL_CHARS = 256


def check_model(body):
    # The name ends up in a response header, metric labels and breaker keys: it must be
    # printable and of a sane length, or it would break those after the upstream answered.
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        _fail("model", "'model' must be a string")
    if len(model) > MAX_MODEL_CHARS:
        _fail("model", f"'model' is longer than {MAX_MODEL_CHARS} characters")
    if unprintable(model) or model != model.strip():  # the alias validator's rule too
        _fail("model", "'model' must not contain control characters or surrounding whitespace")


def validate_chat(body):
    check_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        _fail("messages", "'messages' must be a non-empty array of messages")
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]")
    _check_type(body, "stream", bool, "true or false")
    for name, (low, high) in NUMBER_RANGES.items():
        value = _check_type(body, name, (int, float), "a number")
        if value is not None and not low <= value <= high:
            _fail(name, f"'{name}' must be between {low} and {high}")
    for name in ("max_tokens", "max_completion_tokens", "n", "seed"):
        value = _check_type(body, name, int, "an integer")
        if value is not None and name != "seed" and value < 1:
            _fail(name, f"'{name}' must be at least 1")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or isinstance(stop, list)
                                 and all(isinstance(s, str) for s in stop)):
        _fail("stop", "'stop' must be a string or an array of strings")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            _fail("tools", "'tools' must be an array")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance((tool.get("function") or {}).get("name"), str):
                _fail(f"tools[{i}]", "each tool must be {'type': 'function', 'function': {'name': ...}}")
    stream_options = _check_type(body, "stream_options", dict, "an object")
    if stream_options is not None:
        _check_type(stream_options, "include_usage", bool, "true or false", "stream_options.include_usage")
    response_format = _check_type(body, "response_format", dict, "an object")
    if response_format is not None:
        kind = response_format.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            _fail("response_format.type", "'response_format.type' must be text, json_object or json_schema")
        if kind == "json_schema" and not isinstance(response_format.get("json_schema"), dict):
            _fail("response_format.json_schema", "'response_format.json_schema' must be an object")
    return body


def _check_message(message, param):
    if not isinstance(message, dict):
        _fail(param, "each message must be an object")
    role = message.get("role")
    if role not in ROLES:
        _fail(f"{param}.role", f"'role' must be one of {', '.join(sorted(ROLES))}")
    content = message.get("content")
    if content is None:
        if role == "assistant":  # an assistant turn may carry only tool_calls
            return
        _fail(f"{param}.content", "'content' is required")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        _fail(f"{param}.content", "'content' must be a string or an array of content parts")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            _fail(f"{param}.content[{j}]", "each content part must be an object with a 'type'")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            _fail(f"{param}.content[{j}].text", "a text part needs 'text'")
        if part["type"] == "image_url":
            url = image_url(part)
            if not isinstance(url, str) or not url:
                _fail(f"{param}.content[{j}].image_url", "an image_url part needs 'image_url.url'")


def validate_embeddings(body):
    check_model(body)
    if input_strings(body) is None:
        _fail("input", "'input' must be a non-empty string or array of strings")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        _fail("encoding_format", "'encoding_format' must be 'float' or 'base64'")
    return body
