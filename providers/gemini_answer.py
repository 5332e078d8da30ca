"""Gemini answer -> OpenAI, with no network: whole ``generateContent`` answers and
streamed ones as OpenAI completions and chunks (finish reasons, usage, blocks), and the
SDK's error answers as ``providers.errors`` classes.
"""
from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from google.genai import errors as genai_errors
from google.genai import types

from . import base, errors
from .openai_request import tool_call

SIGNATURE_CACHE_SIZE = 10000
BLOCK_REASONS = {
    "SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE_SAFETY",
}
_CONTEXT_LENGTH = re.compile(
    r"exceeds the maximum number of tokens|input token count.*exceed|too many tokens|"
    r"exceeds the (?:model'?s? )?context|token limit", re.IGNORECASE | re.DOTALL,
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


class ThoughtSignatures(collections.OrderedDict):
    """call id -> the thought signature Gemini gave the call, the newest kept: Gemini wants
    them back when a client returns the calls in its history."""

    def remember(self, call_id: str, signature: bytes | None) -> None:
        if not signature:
            return
        self[call_id] = signature
        self.move_to_end(call_id)
        while len(self) > SIGNATURE_CACHE_SIZE:
            self.popitem(last=False)


def enum_name(value: Any) -> str | None:
    if value is None:
        return None
    name = getattr(value, "name", None) or str(value)
    return name.rsplit(".", 1)[-1].upper()


def usage(metadata: Any) -> dict | None:
    """OpenAI usage from Gemini's ``usage_metadata`` (thinking tokens count as completion)."""
    if metadata is None:
        return None
    completion = (metadata.candidates_token_count or 0) + (getattr(metadata, "thoughts_token_count", None) or 0)
    return base.usage(metadata.prompt_token_count, completion)


def retry_delay(error: Any) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail (``"retryDelay": "37s"``), or None."""
    for detail in (error.get("details") if isinstance(error, dict) else None) or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay") or ""))
            if match:
                return float(match.group(1))
    return None


class AnswerTranslation:
    """Gemini answers -> OpenAI for one provider: ``name`` prefixes messages, ``scrub``
    cleans upstream text quoted in them."""

    def __init__(self, name: str, *, signatures: ThoughtSignatures, scrub: Callable[[Any], str] = str):
        self.name = name
        self.signatures = signatures
        self.scrub = scrub

    def tool_call(self, function_call: types.FunctionCall, signature: bytes | None) -> dict:
        call = tool_call(function_call.name or "", function_call.args or {}, function_call.id)
        self.signatures.remember(call["id"], signature)
        return call

    def check_prompt(self, response: Any) -> None:
        feedback = getattr(response, "prompt_feedback", None)
        reason = enum_name(getattr(feedback, "block_reason", None)) if feedback else None
        if reason and reason != "BLOCKED_REASON_UNSPECIFIED":
            detail = getattr(feedback, "block_reason_message", None)
            raise errors.Blocked(f"{self.name}: Google blocked the prompt (block_reason {reason})"
                                 + (f": {self.scrub(detail)}" if detail else ""))

    def candidate(self, response: Any) -> tuple[Any, str | None]:
        """The first candidate and its finish reason; raises when it was blocked."""
        candidate = response.candidates[0]
        reason = enum_name(candidate.finish_reason)
        if reason in BLOCK_REASONS:
            categories = [enum_name(rating.category) for rating in (getattr(candidate, "safety_ratings", None) or ())
                          if getattr(rating, "blocked", False) and rating.category is not None]
            message = f"{self.name}: Google blocked the answer (finish_reason {reason})"
            if categories:
                message += f": {', '.join(categories)}"
            detail = getattr(candidate, "finish_message", None)
            if detail:
                message += f" ({self.scrub(detail)})"
            raise errors.Blocked(message)
        return candidate, reason

    def finish_reason(self, reason: str | None, has_text: bool, has_tool_calls: bool) -> str:
        """OpenAI's finish_reason for a Gemini one (plain and streamed answers alike)."""
        if reason == "MALFORMED_FUNCTION_CALL":
            raise errors.ProtocolError(f"{self.name}: the model produced a malformed function call")
        if reason == "MAX_TOKENS":
            if not has_text and not has_tool_calls:
                raise errors.Truncated(f"{self.name}: Gemini stopped at the max_tokens limit before producing "
                                       "any output (finish_reason MAX_TOKENS).")
            return "length"
        return "tool_calls" if has_tool_calls else "stop"

    def completion(self, model: str, response: Any) -> dict:
        """The OpenAI ``chat.completion`` for a whole ``generateContent`` answer."""
        self.check_prompt(response)
        if not response.candidates:
            raise errors.ProtocolError(f"{self.name}: the answer has no candidates")
        candidate, reason = self.candidate(response)
        texts, thoughts, tool_calls = [], [], []
        for part in (candidate.content.parts if candidate.content else None) or ():
            if part.function_call is not None:
                tool_calls.append(self.tool_call(part.function_call, part.thought_signature))
            elif part.text is not None:
                (thoughts if part.thought else texts).append(part.text)
        text = "".join(texts)
        finish = self.finish_reason(reason, bool(text), bool(tool_calls))
        if finish == "stop" and not text and reason not in (None, "STOP", "FINISH_REASON_UNSPECIFIED"):
            raise errors.ProtocolError(f"{self.name}: empty answer (finish_reason {reason})")
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        response_id = getattr(response, "response_id", None)
        return base.completion(model, message, finish, usage(response.usage_metadata),
                               id=f"chatcmpl-{response_id}" if response_id else None)

    def stream(self, model: str) -> GeminiStream:
        return GeminiStream(self, model)

    def embeddings(self, model: str, response: Any, count: int) -> dict:
        vectors = response.embeddings or []
        if len(vectors) != count:
            raise errors.ProtocolError(f"{self.name}: the embeddings answer does not hold one vector per input")
        metadata = getattr(response, "usage_metadata", None)
        prompt_tokens = getattr(metadata, "prompt_token_count", None) if metadata is not None else None
        return base.embeddings(model, [[float(value) for value in (vector.values or [])] for vector in vectors],
                               prompt_tokens or 0)

    def api_error(self, exc: genai_errors.APIError) -> errors.ProviderError:
        """The taxonomy error for an error answer the SDK raised."""
        status = exc.code if isinstance(exc.code, int) else 500
        message = exc.message or exc.status or f"HTTP {status}"
        if not isinstance(message, str):
            message = orjson.dumps(message).decode()
        message = self.scrub(message)
        details = exc.details if isinstance(exc.details, dict) else {}
        error = details.get("error") if isinstance(details.get("error"), dict) else details
        headers = getattr(getattr(exc, "response", None), "headers", None)
        retry_after = None
        if headers is not None:
            try:
                retry_after = errors.parse_retry_after(headers.get("retry-after"))
            except Exception:  # pragma: no cover - odd header containers
                retry_after = None
        if retry_after is None:
            retry_after = retry_delay(error)
        text = f"{self.name}: {message}"
        if status == 400 and _CONTEXT_LENGTH.search(message):
            return errors.ContextLengthExceeded(text)
        if status == 400 and ("API_KEY_INVALID" in orjson.dumps(error, default=str).decode()
                              or "api key not valid" in message.lower()):
            return errors.from_status(401, text)
        return errors.from_status(status, text, code=exc.status if isinstance(exc.status, str) else None,
                                  retry_after=retry_after)


class GeminiStream:
    """Streamed Gemini answers -> OpenAI chunks: ``chunks`` for each answer, then ``end``."""

    def __init__(self, translation: AnswerTranslation, model: str):
        self.translation = translation
        self.model = model
        self.id, self.created = base.new_id(), int(time.time())
        self.role_sent = False
        self.tool_index = 0
        self.has_text = False
        self.finish: str | None = None
        self.usage: dict | None = None

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        return base.chunk(self.model, delta, finish_reason, id=self.id, created=self.created)

    def chunks(self, response: Any) -> Iterator[dict]:
        self.translation.check_prompt(response)
        if response.usage_metadata is not None:
            self.usage = usage(response.usage_metadata)
        if not response.candidates:
            return
        candidate, reason = self.translation.candidate(response)
        for part in (candidate.content.parts if candidate.content else None) or ():
            delta: dict[str, Any] = {}
            if part.function_call is not None:
                call = self.translation.tool_call(part.function_call, part.thought_signature)
                delta["tool_calls"] = [{"index": self.tool_index, **call}]
                self.tool_index += 1
            elif part.text:
                if part.thought:
                    delta["reasoning_content"] = part.text
                else:
                    delta["content"] = part.text
                    self.has_text = True
            if not delta:
                continue
            if not self.role_sent:
                delta = {"role": "assistant", **delta}
                self.role_sent = True
            yield self._chunk(delta)
        if reason and reason != "FINISH_REASON_UNSPECIFIED":
            self.finish = reason

    def end(self) -> Iterator[dict]:
        """The finish chunk (when Gemini gave a finish reason) and the usage chunk."""
        if self.finish is not None:
            finish = self.translation.finish_reason(self.finish, self.has_text, bool(self.tool_index))
            yield self._chunk({} if self.role_sent else {"role": "assistant", "content": ""}, finish)
        if self.usage is not None:
            yield base.usage_chunk(self.model, self.usage, id=self.id, created=self.created)
