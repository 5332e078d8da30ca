"""Validation of OpenAI request bodies (README#endpoints): every 400 names the bad field.

Only what the gateway or an adapter relies on is checked, but that is checked for its
type all the way down (every value an adapter indexes into or hashes), so a malformed
field is a 400 here and never an exception in an adapter. Any other field an OpenAI
client sends is accepted and left for the upstream (or ignored).
"""
import orjson
from django.http import HttpRequest

from manallm import jsonbody
from manallm.errors import InvalidRequest
from manallm.text import unprintable
from providers.model_names import model_problem
from providers.openai_request import TEXT_TYPES, image_url, input_strings


ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
TOOL_CHOICE_MODES = ("none", "auto", "required")
NUMBER_RANGES = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
}


def parse_json(request: HttpRequest) -> dict:
    """The request body as a JSON object, or the right 400/413 (manallm.jsonbody: the one
    parser and its limits, shared with the management API)."""
    data = jsonbody.read(request)
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return data


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


def check_model(body: dict) -> None:
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
    provider, slash, name = model.partition("/")
    problem = model_problem(provider, name) if slash else None  # providers.model_names
    if problem:
        _fail("model", f"the model name {name!r} {problem}")


def validate_chat(body: dict) -> dict:
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
    tools = _check_type(body, "tools", list, "an array")
    for i, tool in enumerate(tools or ()):
        _check_tool(tool, f"tools[{i}]")
    _check_tool_choice(body.get("tool_choice"))
    stream_options = _check_type(body, "stream_options", dict, "an object")
    if stream_options is not None:
        _check_type(stream_options, "include_usage", bool, "true or false", "stream_options.include_usage")
    response_format = _check_type(body, "response_format", dict, "an object")
    if response_format is not None:
        kind = response_format.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            _fail("response_format.type", "'response_format.type' must be text, json_object or json_schema")
        if kind == "json_schema":
            schema = response_format.get("json_schema")
            if not isinstance(schema, dict):
                _fail("response_format.json_schema", "'response_format.json_schema' must be an object")
            _check_type(schema, "name", str, "a string", "response_format.json_schema.name")
            _check_type(schema, "schema", dict, "an object", "response_format.json_schema.schema")
    return body


def _check_tool(tool, param):
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        _fail(param, "each tool must be {'type': 'function', 'function': {'name': ...}}")
    _check_type(tool, "type", str, "a string", f"{param}.type")
    _check_type(function, "description", str, "a string", f"{param}.function.description")
    _check_type(function, "parameters", dict, "an object", f"{param}.function.parameters")


def _check_tool_choice(choice):
    if choice is None or isinstance(choice, str) and choice in TOOL_CHOICE_MODES:
        return
    if isinstance(choice, dict):
        _check_type(choice, "type", str, "a string", "tool_choice.type")
        function = choice.get("function")
        if choice.get("type", "function") != "function" and function is None:
            return  # another kind of choice: the upstream's to judge
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return
    _fail("tool_choice", f"'tool_choice' must be one of {', '.join(TOOL_CHOICE_MODES)} or "
                         "{'type': 'function', 'function': {'name': ...}}")


def _check_message(message, param):
    if not isinstance(message, dict):
        _fail(param, "each message must be an object")
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        _fail(f"{param}.role", f"'role' must be one of {', '.join(sorted(ROLES))}")
    for name in ("name", "tool_call_id", "reasoning_content"):  # hashed or forwarded as text
        _check_type(message, name, str, "a string", f"{param}.{name}")
    if role == "assistant":
        calls = _check_type(message, "tool_calls", list, "an array", f"{param}.tool_calls")
        for j, call in enumerate(calls or ()):
            _check_tool_call(call, f"{param}.tool_calls[{j}]")
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
        _check_part(part, f"{param}.content[{j}]")


def _check_tool_call(call, param):
    if not isinstance(call, dict):
        _fail(param, "each tool call must be an object with 'id', 'type' and 'function'")
    _check_type(call, "id", str, "a string", f"{param}.id")
    _check_type(call, "type", str, "a string", f"{param}.type")
    function = call.get("function")
    if not isinstance(function, dict):
        _fail(f"{param}.function", "a tool call needs 'function': {'name', 'arguments'}")
    if not isinstance(function.get("name"), str):
        _fail(f"{param}.function.name", "a tool call's 'function.name' must be a string")
    arguments = _check_type(function, "arguments", str, "a JSON string", f"{param}.function.arguments")
    if arguments:
        try:  # the adapters that translate decode it, with the body's depth limit
            jsonbody.loads(arguments)
        except orjson.JSONDecodeError:
            pass  # not JSON: forwarded as text
        except jsonbody.TooDeep:
            _fail(f"{param}.function.arguments", f"the arguments are nested deeper than {jsonbody.MAX_DEPTH} levels")


def _check_part(part, param):
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        _fail(param, "each content part must be an object with a 'type'")
    kind = part["type"]
    if kind in TEXT_TYPES and not isinstance(part.get("text"), str):
        _fail(f"{param}.text", "a text part needs 'text'")
    elif kind == "image_url":
        url = image_url(part)
        if not isinstance(url, str) or not url:
            _fail(f"{param}.image_url", "an image_url part needs 'image_url.url'")
    elif kind == "input_audio":
        audio = _check_type(part, "input_audio", dict, "an object", f"{param}.input_audio")
        if audio is None or not isinstance(audio.get("data"), str):
            _fail(f"{param}.input_audio.data", "an input_audio part needs 'input_audio.data' (base64)")
        _check_type(audio, "format", str, "a string", f"{param}.input_audio.format")
    elif kind == "file":
        file = _check_type(part, "file", dict, "an object", f"{param}.file")
        if file is None:
            _fail(f"{param}.file", "a file part needs 'file'")
        for name in ("file_data", "filename", "file_id"):
            _check_type(file, name, str, "a string", f"{param}.file.{name}")


def validate_embeddings(body: dict) -> dict:
    check_model(body)
    if input_strings(body) is None:
        _fail("input", "'input' must be a non-empty string or array of strings")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        _fail("encoding_format", "'encoding_format' must be 'float' or 'base64'")
    dimensions = _check_type(body, "dimensions", int, "a positive integer")
    if dimensions is not None and dimensions < 1:
        _fail("dimensions", "'dimensions' must be a positive integer")
    return body
