"""OpenAI request -> Gemini, with no network: the google-genai SDK request objects
(contents, system instruction, ``GenerateContentConfig``) for a client's OpenAI body.

Function calls the client sends back in its history get the thought signature Gemini
gave them (``gemini_answer.ThoughtSignatures``). Refusals are ``providers.errors``.
"""
from __future__ import annotations

import base64
import mimetypes
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson
import pydantic
from google.genai import types

from manallm import jsonbody

from . import errors, model_names
from .openai_request import (b64decode, content_parts, data_url, decode_arguments, image_url, is_text, sampling,
                             structured_output, text_of)

# Documented stand-in for a Gemini 3 function call whose thought signature is unknown
# (history written by another model or another worker).
DUMMY_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")
_TOOL_CHOICE_MODES = {"none": "NONE", "auto": "AUTO", "required": "ANY"}


class GeminiRequest(NamedTuple):
    model: str
    contents: list[types.Content]
    config: types.GenerateContentConfig


def function_calling(choice: Any) -> types.FunctionCallingConfig | None:
    """Gemini's function-calling mode for an OpenAI ``tool_choice``."""
    if isinstance(choice, str) and choice in _TOOL_CHOICE_MODES:
        return types.FunctionCallingConfig(mode=_TOOL_CHOICE_MODES[choice])
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return types.FunctionCallingConfig(mode="ANY", allowed_function_names=[name])
    return None


def function_args(value: Any) -> dict:
    """Function-call args as the JSON object Gemini needs."""
    decoded = decode_arguments(value)
    if isinstance(decoded, dict):
        return decoded
    if isinstance(value, str) and decoded == value:  # not JSON
        return {"arguments": value}
    return {"value": decoded}


def tool_result(content: Any) -> dict:
    text = text_of(content)
    try:
        parsed = jsonbody.loads(text) if text else None  # the request body's depth limit
    except (orjson.JSONDecodeError, jsonbody.TooDeep):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"result": text}


def _gemini_id(call_id: str | None) -> str | None:
    # Ids minted here (``call_...``) are ours; Gemini's own ids go back as they came.
    return call_id if call_id and not call_id.startswith("call_") else None


class RequestTranslation:
    """OpenAI body -> ``GeminiRequest`` for one provider (``name`` prefixes refusals)."""

    def __init__(self, name: str, *, signatures: Mapping[str, bytes], default_model: str = "gemini-2.5-flash",
                 scrub: Callable[[Any], str] = str):
        self.name = name
        self.signatures = signatures
        self.default_model = default_model
        self.scrub = scrub

    def model(self, model: str | None) -> str:
        """The SDK's model name; one it cannot put in a URL (stored before the alias
        validator refused it) is refused here, never passed to the SDK's bare ValueError."""
        model = (model or "").strip() or self.default_model
        problem = model_names.kind_problem("google", model)
        if problem:
            raise errors.UpstreamRequestError(f"{self.name}: the model name {model!r} {problem}",
                                              param="model", code="invalid_model")
        return model[len("models/"):] if model.startswith("models/") else model

    def _refuse(self, message: str) -> errors.CapabilityError:
        return errors.CapabilityError(f"{self.name}: {message}")

    def request(self, model: str, body: dict) -> GeminiRequest:
        model = self.model(model)
        try:
            system, contents = self.contents(model, body.get("messages"))
            if not contents:
                raise self._refuse("Gemini needs at least one user or assistant message.")
            return GeminiRequest(model, contents, self.config(body, system))
        except pydantic.ValidationError as exc:
            # A value the SDK's request types refuse (what Gemini would answer with a 400).
            first = exc.errors()[0] if exc.errors() else {}
            where = ".".join(str(item) for item in first.get("loc", ()))
            detail = self.scrub(f"{where}: {first.get('msg', 'invalid value')}")
            raise errors.UpstreamRequestError(f"{self.name}: invalid request for Gemini ({detail})",
                                              upstream_status=400) from None

    def config(self, body: dict, system: str | None) -> types.GenerateContentConfig:
        config: dict[str, Any] = {"automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True)}
        if system:
            config["system_instruction"] = system
        options = sampling(body)
        if "max_tokens" in options:
            options["max_output_tokens"] = options.pop("max_tokens")
        if "stop" in options:
            options["stop_sequences"] = options.pop("stop")
        config.update(options)
        structured = structured_output(body)
        if structured is not None:
            config["response_mime_type"] = "application/json"
            if structured[1] is not None:
                config["response_json_schema"] = structured[1]
        tools = body.get("tools")
        if tools:
            config["tools"] = [types.Tool(function_declarations=[self.declaration(tool) for tool in tools])]
            calling = function_calling(body.get("tool_choice"))
            if calling is not None:
                config["tool_config"] = types.ToolConfig(function_calling_config=calling)
        return types.GenerateContentConfig(**config)

    def declaration(self, tool: Any) -> types.FunctionDeclaration:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise self._refuse(f"tools of type {kind!r} are not supported; only function tools.")
        function = tool.get("function") or {}
        if not function.get("name"):
            raise self._refuse("a function tool has no name.")
        declaration = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        if isinstance(function.get("parameters"), dict) and function["parameters"]:
            declaration["parameters_json_schema"] = function["parameters"]
        return types.FunctionDeclaration(**declaration)

    def contents(self, model: str, messages: Any) -> tuple[str | None, list[types.Content]]:
        """(system_instruction, contents) from OpenAI messages."""
        system: list[str] = []
        contents: list[types.Content] = []
        tool_names: dict[str, str] = {}

        def add(role, parts):
            if not parts:
                return
            if contents and contents[-1].role == role:
                contents[-1].parts.extend(parts)
            else:
                contents.append(types.Content(role=role, parts=list(parts)))

        for message in messages or ():
            if not isinstance(message, dict):
                continue
            role = message.get("role") or "user"
            content = message.get("content")
            if role in ("system", "developer"):
                text = text_of(content)
                if text:
                    system.append(text)
            elif role == "user":
                add("user", self.parts(content))
            elif role == "assistant":
                add("model", self._assistant_parts(model, message, tool_names))
            elif role in ("tool", "function"):
                call_id = message.get("tool_call_id")
                name = tool_names.get(call_id) or message.get("name")
                if not name:
                    raise self._refuse(f"a tool message's tool_call_id {call_id!r} matches no earlier assistant tool call.")
                add("user", [types.Part(function_response=types.FunctionResponse(
                    id=_gemini_id(call_id), name=name, response=tool_result(content)))])
            else:
                raise self._refuse(f"messages with role {role!r} are not supported.")
        return "\n\n".join(system) or None, contents

    def _assistant_parts(self, model: str, message: dict, tool_names: dict[str, str]) -> list[types.Part]:
        parts = [part for part in self.parts(message.get("content")) if part.text is None or part.text != ""]
        for call in message.get("tool_calls") or ():
            function = (call or {}).get("function") or {}
            name = function.get("name")
            if not name:
                continue
            call_id = call.get("id")
            if call_id:
                tool_names[call_id] = name
            part = types.Part(function_call=types.FunctionCall(
                id=_gemini_id(call_id), name=name, args=function_args(function.get("arguments"))))
            signature = self.signatures.get(call_id) if call_id else None
            if signature is None and model.startswith("gemini-3") and not any(p.function_call for p in parts):
                signature = DUMMY_SIGNATURE
            if signature is not None:
                part.thought_signature = signature
            parts.append(part)
        return parts

    def parts(self, content: Any) -> list[types.Part]:
        parts = []
        for item in content_parts(content):
            kind = item.get("type")
            if is_text(item):
                parts.append(types.Part(text=item.get("text") or ""))
            elif kind == "image_url":
                parts.append(self.media_part(image_url(item), "image"))
            elif kind == "input_audio":
                audio = item.get("input_audio") or {}
                data = b64decode(audio.get("data"))
                if data is None:
                    raise self._refuse("input_audio data must be base64.")
                fmt = (audio.get("format") or "wav").lower()
                parts.append(types.Part(inline_data=types.Blob(mime_type=f"audio/{fmt}", data=data)))
            elif kind == "file":
                parts.append(self._file_part(item.get("file") or {}))
            else:
                raise self._refuse(f"message content of type {kind!r} is not supported by Google.")
        return parts

    def _file_part(self, file: dict) -> types.Part:
        data_url_or_b64 = file.get("file_data")
        if not isinstance(data_url_or_b64, str) or not data_url_or_b64:
            raise self._refuse("file parts must carry inline file_data.")
        if data_url_or_b64.startswith("data:"):
            return self.media_part(data_url_or_b64, "file")
        mime = mimetypes.guess_type(file.get("filename") or "")[0] or "application/pdf"
        data = b64decode(data_url_or_b64)
        if data is None:
            raise self._refuse("file_data must be base64 or a data URL.")
        return types.Part(inline_data=types.Blob(mime_type=mime, data=data))

    def media_part(self, url: Any, what: str) -> types.Part:
        if not isinstance(url, str) or not url:
            raise self._refuse(f"an {what} part has no URL.")
        if url.startswith("data:"):
            parsed = data_url(url)
            if parsed is None:
                raise self._refuse(f"malformed data URL in an {what} part.")
            data = parsed.data()
            if data is None:
                raise self._refuse(f"the {what} data URL is not valid base64.")
            return types.Part(inline_data=types.Blob(mime_type=parsed.mime, data=data))
        lowered = url.lower()
        if lowered.startswith("gs://") or lowered.startswith("https://generativelanguage.googleapis.com/"):
            mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or ("image/jpeg" if what == "image" else None)
            return types.Part(file_data=types.FileData(file_uri=url, mime_type=mime))
        raise self._refuse(f"Gemini cannot fetch remote {what} URLs; send the {what} inline as a "
                           f"data:<mime>;base64 URL (or a gs:// / Gemini Files API URI).")
