"""Reading a client's OpenAI request body: the pieces every translating adapter (and the
request validator in ``routing.schema``) needs, written once.

Content parts, image and data URLs, tool-call ids and arguments, sampling fields,
structured-output and embedding inputs. Nothing here knows an upstream's shape.
"""
from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any, NamedTuple
from urllib.parse import unquote_to_bytes

import orjson

from manallm import jsonbody

TEXT_TYPES = ("text", "input_text")
SAMPLING_FIELDS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")


# --- message content -------------------------------------------------------------------


def content_parts(content: Any) -> list[dict]:
    """A message's ``content`` as a list of part objects.

    A string is one text part (none when empty), bare strings in a list are text parts,
    anything in a list that is not an object is skipped, and any other value is read as
    text.
    """
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        return [{"type": "text", "text": str(content)}]
    return [{"type": "text", "text": part} if isinstance(part, str) else part
            for part in content if isinstance(part, (str, dict))]


def is_text(part: dict) -> bool:
    return part.get("type") in TEXT_TYPES


def text_of(content: Any) -> str:
    """The text parts of a message's ``content`` joined by newlines (images left out)."""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text") or "" for part in content_parts(content) if is_text(part))


def image_url(part: dict) -> Any:
    """The URL of an ``image_url`` part (``{"url": ...}`` or the bare string form)."""
    image = part.get("image_url")
    return image.get("url") if isinstance(image, dict) else image


class DataURL(NamedTuple):
    mime: str
    base64: bool
    payload: str

    def data(self) -> bytes | None:
        """The decoded bytes, or None when a base64 payload is not valid base64."""
        return b64decode(self.payload) if self.base64 else unquote_to_bytes(self.payload)


def data_url(url: str) -> DataURL | None:
    """A ``data:`` URL's parts (RFC 2397), or None when ``url`` is not a well-formed one."""
    if not url.startswith("data:"):
        return None
    header, sep, payload = url.partition(",")
    if not sep:
        return None
    meta = header[len("data:"):].split(";")
    return DataURL(meta[0] or "text/plain", "base64" in (m.strip().lower() for m in meta[1:]), payload)


def b64decode(data: Any) -> bytes | None:
    """Base64 (standard or URL-safe, whitespace and missing padding forgiven), or None."""
    if not isinstance(data, str):
        return None
    data = "".join(data.split())
    padded = data + "=" * (-len(data) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(padded)
        except (binascii.Error, ValueError):
            return None


# --- tool calls ---------------------------------------------------------------------------


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def decode_arguments(value: Any) -> Any:
    """A tool call's ``arguments`` decoded: ``{}`` when absent or blank, the JSON value of
    a JSON string, and the value as given otherwise (a string that is not JSON, or nested
    deeper than a request body may be, included)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            return jsonbody.loads(value)  # the request body's depth limit (manallm.jsonbody)
        except (orjson.JSONDecodeError, jsonbody.TooDeep):
            return value
    return value


def encode_arguments(value: Any) -> str:
    """A tool call's arguments as the JSON string OpenAI answers carry."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value if value is not None else {}, default=str).decode()


def tool_call(name: str | None, arguments: Any, id: str | None = None) -> dict:
    """An OpenAI ``tool_calls`` item (a fresh ``call_`` id when the upstream gave none)."""
    return {"id": id or new_call_id(), "type": "function",
            "function": {"name": name, "arguments": encode_arguments(arguments)}}


# --- options --------------------------------------------------------------------------------


def sampling(body: dict) -> dict:
    """The OpenAI sampling fields that are set, with ``max_tokens`` (or the newer
    ``max_completion_tokens``) and ``stop`` as a list: for adapters that translate."""
    options = {key: body[key] for key in SAMPLING_FIELDS if body.get(key) is not None}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return options


def structured_output(body: dict) -> tuple[str, dict | None] | None:
    """``("json_object", None)`` or ``("json_schema", schema or None)`` when the request
    asks for JSON output, else None."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return kind, None
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return kind, schema if isinstance(schema, dict) else None
    return None


def input_strings(body: dict) -> list[str] | None:
    """The embeddings ``input`` as a non-empty list of strings, or None when it is not one."""
    value = body.get("input")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        return None
    return items
