"""OpenAI-compatible clouds and servers: OpenRouter, Groq, Together, OpenAI, vLLM, ...

The client's OpenAI body is passed through (a copy, with the provider-side model); answers
come back exactly as the upstream sent them (the router rewrites ``model``).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from . import errors
from .http import HTTPProvider, drain, loads, sse_data

logger = logging.getLogger("manallm.providers")


def decode_event(data: str) -> list[Any] | None:
    """The JSON objects in one SSE ``data`` payload, or None when it is malformed.

    Normally one object; a payload whose lines are separate objects (an upstream that
    forgot the blank line between events) yields each of them.
    """
    try:
        return [loads(data)]
    except orjson.JSONDecodeError:
        pass
    if "\n" in data:
        try:
            return [loads(part) for part in data.split("\n") if part.strip()]
        except orjson.JSONDecodeError:
            pass
    return None


class OpenAICompatProvider(HTTPProvider):
    kind = "openai"

    def request_body(self, model: str, body: dict, *, stream: bool) -> dict:
        payload = dict(body)
        payload["model"] = model
        if stream:
            payload["stream"] = True
            options = payload.get("stream_options")
            payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        else:
            payload.pop("stream", None)
            payload.pop("stream_options", None)
        return payload

    async def chat(self, model: str, body: dict) -> dict:
        answer = await self.request_json("POST", "/chat/completions", self.request_body(model, body, stream=False))
        return self._checked(answer, "chat", "choices")

    async def chat_stream(self, model: str, body: dict) -> AsyncIterator[dict]:
        payload = self.request_body(model, body, stream=True)
        async with self.stream("POST", "/chat/completions", payload) as response:
            async with contextlib.aclosing(sse_data(response.aiter_lines())) as events:
                async for data in events:
                    if data.strip() == "[DONE]":
                        await drain(events)
                        return
                    decoded = decode_event(data)
                    if decoded is None:
                        logger.warning("%s/%s: skipped a malformed stream event: %.200r", self.name, model, data)
                        continue
                    for event in decoded:
                        if not isinstance(event, dict):
                            logger.warning("%s/%s: skipped a stream event that is not an object: %.200r",
                                           self.name, model, data)
                            continue
                        if event.get("error"):
                            raise self.payload_error(event)
                        yield event

    async def embed(self, model: str, body: dict) -> dict:
        payload = dict(body)
        payload["model"] = model
        payload.pop("encoding_format", None)  # floats (the default); the API layer does base64
        answer = await self.request_json("POST", "/embeddings", payload)
        return self._checked(answer, "embeddings", "data")

    def _checked(self, answer: Any, what: str, key: str) -> dict:
        """A 200 answer that is really an answer: an object with its list under ``key``."""
        if not isinstance(answer, dict):
            raise errors.ProtocolError(f"{self.name}: the {what} answer is not a JSON object")
        if answer.get("error") and not answer.get(key):
            raise self.payload_error(answer)
        if not isinstance(answer.get(key), list):
            raise errors.ProtocolError(f"{self.name}: the {what} answer has no '{key}'")
        return answer

    async def list_models(self) -> list[str]:
        answer = await self.request_json("GET", "/models")
        items = answer.get("data") if isinstance(answer, dict) else answer  # Together answers a bare list
        if not isinstance(items, list):
            raise errors.ProtocolError(f"{self.name}: the models answer has no 'data' list")
        return [item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]

    async def probe(self) -> None:
        # Status only: OpenRouter's model list is large and a probe needs none of it.
        await self.check("GET", "/models")
