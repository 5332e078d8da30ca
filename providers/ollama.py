"""Ollama on its native API (/api/chat, /api/embed, /api/tags, /api/show).

OpenAI requests are translated to Ollama's shape and the answers back to OpenAI shapes.
Structured-output answers wrapped in a Markdown code fence are unwrapped for plain
(non-streamed) calls; streamed text is passed on as it comes (a fence split across
chunks cannot be removed without buffering the whole answer).
"""
from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import orjson
from django.conf import settings

from . import base, errors
from .http import HTTPProvider, drain, loads
from .openai_request import (content_parts, data_url, decode_arguments, image_url, is_text, sampling,
                             structured_output, tool_call)

logger = logging.getLogger("manallm.providers")

SHOW_TIMEOUT = 10.0

_FENCE = re.compile(r"\A\s*```[A-Za-z0-9_-]*[ \t]*\r?\n?(.*?)\r?\n?[ \t]*```\s*\Z", re.DOTALL)


def strip_fence(text: str) -> str:
    """``text`` without a Markdown code fence around the whole of it."""
    if not text or "```" not in text:
        return text
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def tool_family_match(model: str, families: Iterable[str]) -> bool:
    """Whether the model's base name (before ':', without a namespace) is a listed family."""
    name = model.split(":", 1)[0].rsplit("/", 1)[-1].lower()
    return any(family and name.startswith(family.lower()) for family in families)


# --- request translation ----------------------------------------------------------------


def _image_data(part: dict, name: str) -> str:
    url = image_url(part)
    if not isinstance(url, str) or not url:
        raise errors.CapabilityError(f"{name}: an image_url part has no URL.")
    if url.startswith("data:"):
        parsed = data_url(url)
        if parsed and parsed.mime.lower().startswith("image/") and parsed.base64 and parsed.payload:
            return parsed.payload
        raise errors.CapabilityError(f"{name}: image data URLs must be base64-encoded images (data:image/...;base64,...).")
    raise errors.CapabilityError(
        f"{name}: Ollama cannot fetch remote images; send the image inline as a data:image/...;base64 URL."
    )


def _content(content: Any, name: str) -> tuple[str, list[str]]:
    """(text, images) from an OpenAI message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for part in content_parts(content):
        if is_text(part):
            texts.append(part.get("text") or "")
        elif part.get("type") == "image_url":
            images.append(_image_data(part, name))
        else:
            raise errors.CapabilityError(
                f"{name}: message content of type {part.get('type')!r} is not supported by Ollama.")
    return "\n".join(texts), images


def translate_messages(messages: Any, name: str) -> list[dict]:
    out = []
    tool_names = {}
    for message in messages or ():
        if not isinstance(message, dict):
            continue
        role = message.get("role") or "user"
        if role == "developer":
            role = "system"
        text, images = _content(message.get("content"), name)
        item = {"role": role, "content": text}
        if images:
            item["images"] = images
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = (call or {}).get("function") or {}
                if call.get("id") and function.get("name"):
                    tool_names[call["id"]] = function["name"]
                calls.append({"function": {"name": function.get("name"), "arguments": decode_arguments(function.get("arguments"))}})
            item["tool_calls"] = calls
        if role == "tool":
            tool_name = message.get("name") or tool_names.get(message.get("tool_call_id"))
            if tool_name:
                item["tool_name"] = tool_name
        if role == "assistant" and message.get("reasoning_content"):
            item["thinking"] = message["reasoning_content"]
        out.append(item)
    return out


def translate_request(model: str, body: dict, *, stream: bool, name: str = "ollama") -> dict:
    payload = {"model": model, "messages": translate_messages(body.get("messages"), name), "stream": stream}
    tools = body.get("tools")
    if tools and body.get("tool_choice") != "none":
        payload["tools"] = tools
    structured = structured_output(body)
    if structured is not None:
        payload["format"] = structured[1] or "json"
    options = sampling(body)
    if "max_tokens" in options:
        options["num_predict"] = options.pop("max_tokens")
    if options:
        payload["options"] = options
    return payload


# --- answer translation -----------------------------------------------------------------


def openai_tool_calls(calls: Any, start: int = 0, *, with_index: bool = False) -> list[dict]:
    out = []
    for offset, call in enumerate(calls or ()):
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        item = tool_call(function.get("name"), function.get("arguments"), call.get("id"))
        if with_index:
            item = {"index": start + offset, **item}
        out.append(item)
    return out


def finish_reason(done_reason: str | None, had_tool_calls: bool) -> str:
    if had_tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


class OllamaProvider(HTTPProvider):
    kind = "ollama"

    def __init__(self, name: str, **kwargs: Any):
        super().__init__(name, **kwargs)
        self._tools_cache: dict[str, bool] = {}

    async def chat(self, model: str, body: dict) -> dict:
        payload = translate_request(model, body, stream=False, name=self.name)
        answer = await self.request_json("POST", "/api/chat", payload)
        if not isinstance(answer, dict):
            raise errors.ProtocolError(f"{self.name}: the chat answer is not a JSON object")
        if answer.get("error"):
            raise self.payload_error(answer)
        message = answer.get("message")
        if not isinstance(message, dict):
            raise errors.ProtocolError(f"{self.name}: the chat answer has no 'message'")
        content = message.get("content") or ""
        if structured_output(body):
            content = strip_fence(content)
        calls = openai_tool_calls(message.get("tool_calls"))
        out = {"role": "assistant", "content": content if (content or not calls) else None}
        if calls:
            out["tool_calls"] = calls
        if message.get("thinking"):
            out["reasoning_content"] = message["thinking"]
        return base.completion(
            model, out, finish_reason(answer.get("done_reason"), bool(calls)),
            base.usage(answer.get("prompt_eval_count"), answer.get("eval_count")),
        )

    async def chat_stream(self, model: str, body: dict) -> AsyncIterator[dict]:
        payload = translate_request(model, body, stream=True, name=self.name)
        chunk_id, created = base.new_id(), int(time.time())
        role_sent = False
        tool_index = 0

        def make(delta, reason=None):
            nonlocal role_sent
            if not role_sent:
                delta = {"role": "assistant", **delta}
                role_sent = True
            return base.chunk(model, delta, reason, id=chunk_id, created=created)

        async with self.stream("POST", "/api/chat", payload) as response, \
                contextlib.aclosing(response.aiter_lines()) as lines:
            async for line in lines:
                if not line.strip():
                    continue
                try:
                    event = loads(line)
                except orjson.JSONDecodeError:
                    event = None
                if not isinstance(event, dict):
                    logger.warning("%s/%s: skipped a malformed stream line: %.200r", self.name, model, line)
                    continue
                if event.get("error"):
                    raise self.payload_error(event)
                message = event.get("message") or {}
                if isinstance(message, dict):
                    if message.get("thinking"):
                        yield make({"content": "", "reasoning_content": message["thinking"]})
                    if message.get("content"):
                        yield make({"content": message["content"]})
                    calls = openai_tool_calls(message.get("tool_calls"), tool_index, with_index=True)
                    if calls:
                        tool_index += len(calls)
                        yield make({"content": None, "tool_calls": calls})
                if event.get("done"):
                    yield make({}, finish_reason(event.get("done_reason"), tool_index > 0))
                    usage = base.usage(event.get("prompt_eval_count"), event.get("eval_count"))
                    await drain(lines)
                    yield base.usage_chunk(model, usage, id=chunk_id, created=created)
                    return

    async def embed(self, model: str, body: dict) -> dict:
        inputs = base.embedding_inputs(body)
        payload = {"model": model, "input": inputs}
        if body.get("dimensions"):
            payload["dimensions"] = body["dimensions"]
        answer = await self.request_json("POST", "/api/embed", payload)
        vectors = answer.get("embeddings") if isinstance(answer, dict) else None
        if isinstance(answer, dict) and answer.get("error"):
            raise self.payload_error(answer)
        if not isinstance(vectors, list) or len(vectors) != len(inputs):
            raise errors.ProtocolError(f"{self.name}: the embed answer does not hold one vector per input")
        return base.embeddings(model, vectors, answer.get("prompt_eval_count"))

    async def list_models(self) -> list[str]:
        answer = await self.request_json("GET", "/api/tags")
        models = answer.get("models") if isinstance(answer, dict) else None
        if not isinstance(models, list):
            raise errors.ProtocolError(f"{self.name}: the tags answer has no 'models' list")
        names = []
        for item in models:
            if isinstance(item, dict):
                name = item.get("name") or item.get("model")
                if isinstance(name, str):
                    names.append(name)
        return names

    async def probe(self) -> None:
        await self.check("GET", "/api/tags")

    async def capabilities(self, model: str) -> list[str] | None:
        """The model's capabilities from /api/show, or None when the answer has none."""
        answer = await self.request_json(
            "POST", "/api/show", {"model": model},
            timeout=httpx.Timeout(min(self.timeout, SHOW_TIMEOUT), connect=self.connect_timeout),
        )
        capabilities = answer.get("capabilities") if isinstance(answer, dict) else None
        return capabilities if isinstance(capabilities, list) else None

    async def supports_tools(self, model: str) -> bool:
        cached = self._tools_cache.get(model)
        if cached is not None:
            return cached
        try:
            capabilities = await self.capabilities(model)
        except errors.ProviderError as exc:
            logger.info("%s: /api/show for %s failed (%s); using the tool-family list", self.name, model, exc)
            capabilities = None
        if capabilities is None:
            return tool_family_match(model, settings.OLLAMA_TOOL_FAMILIES)
        self._tools_cache[model] = result = "tools" in capabilities
        return result
