"""Google Gemini through the google-genai SDK's async client.

OpenAI requests are translated to ``generateContent`` requests and the answers back to
OpenAI shapes. SDK findings this adapter relies on (google-genai 3.4):

- The SDK would use aiohttp for its async calls whenever aiohttp is importable (it is in
  this environment), and its aiohttp path silently retries a refused connection after
  sleeping 1-10 s unless retry_options are set. We hand it our own pooled
  ``httpx.AsyncClient`` (``HttpOptions.httpx_async_client``) instead: the aiohttp path
  is then never taken, every transport failure is an ``httpx`` exception, and the
  client (ours) is closed in ``aclose``.
- The SDK passes a single float timeout per request, which would make the connect
  timeout equal the read timeout; a request event hook puts ``connect_timeout`` back.
- ``retry_options`` of one attempt: the SDK never retries (the router does).
- A ``base_url`` with a path prefix (``http://host:port/google``) is honoured: requests
  go to ``{base_url}/v1beta/models/...``. The API version is pinned to ``v1beta`` (the
  SDK's default would be ``v1``, which lacks some of the fields used here).
- ``FileData`` (``file_uri``) only takes Google Cloud Storage / Files-API URIs, so remote
  http(s) image URLs are refused as a capability error.
"""
import asyncio
import base64
import binascii
import collections
import logging
import mimetypes
import os
import re
import ssl
import time
import uuid
from urllib.parse import unquote_to_bytes

import httpx
import orjson

from . import base, errors, transport
from .openai_request import sampling
from .transport import safe_url

logger = logging.getLogger("manallm.providers")

API_VERSION = "v1beta"
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)
MAX_MESSAGE_CHARS = 1000
MAX_MODEL_PAGES = 20
SIGNATURE_CACHE_SIZE = 10000
# Documented stand-in for a Gemini 3 function call whose thought signature is unknown
# (history written by another model or another worker).
DUMMY_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")

BLOCK_REASONS = {
    "SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE_SAFETY",
}
_CONTEXT_LENGTH = re.compile(
    r"exceeds the maximum number of tokens|input token count.*exceed|too many tokens|"
    r"exceeds the (?:model'?s? )?context|token limit", re.IGNORECASE | re.DOTALL,
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_ssl_context = None


def ssl_context():
    """One TLS context for every Google client in the process (loading CAs costs ~20 ms)."""
    global _ssl_context
    if _ssl_context is None:
        import certifi

        _ssl_context = ssl.create_default_context(
            cafile=os.environ.get("SSL_CERT_FILE", certifi.where()), capath=os.environ.get("SSL_CERT_DIR"),
        )
    return _ssl_context


def _enum_name(value):
    if value is None:
        return None
    name = getattr(value, "name", None) or str(value)
    return name.rsplit(".", 1)[-1].upper()


def new_call_id():
    return f"call_{uuid.uuid4().hex[:24]}"


class GoogleProvider(base.Provider):
    kind = "google"

    def __init__(self, name, *, default_model=None, **kwargs):
        super().__init__(name, **kwargs)
        self.default_model = default_model or "gemini-2.5-flash"
        self._client = None
        self._http = None
        self._loop = None
        self._signatures = collections.OrderedDict()

    # --- the client ------------------------------------------------------------------

    async def _set_connect_timeout(self, request):
        timeout = dict(request.extensions.get("timeout") or {})
        timeout["connect"] = self.connect_timeout
        request.extensions["timeout"] = timeout

    async def _skip_malformed_events(self, response):
        # SPEC §6: a malformed upstream event is skipped and logged. The SDK raises on
        # one and cannot go on, so unparsable events are dropped before it reads them.
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            response.stream = WellFormedEvents(response.stream, self.name)

    def _new_client(self):
        from google import genai
        from google.genai import types

        if not self.api_key:
            raise errors.UpstreamAuthError(f"{self.name}: no API key is configured.")
        context = ssl_context()
        http = transport.client(
            verify=context,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            limits=LIMITS,
            follow_redirects=False,
            event_hooks={"request": [self._set_connect_timeout], "response": [self._skip_malformed_events]},
        )
        options = types.HttpOptions(
            api_version=API_VERSION,
            timeout=max(1, int(self.timeout * 1000)),
            retry_options=types.HttpRetryOptions(attempts=1),
            httpx_async_client=http,
            # The SDK builds a sync client and a websocket context we never use; let them
            # share the TLS context instead of loading the CA bundle twice more.
            client_args={"verify": context},
            async_client_args={"ssl": context},
        )
        if self.base_url:
            options.base_url = self.base_url
        client = genai.Client(vertexai=False, api_key=self.api_key, http_options=options)
        return client, http

    @property
    def client(self):
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._http.is_closed:
            self._client, self._http = self._new_client()
            self._loop = loop
        return self._client

    async def aclose(self):
        client, self._client = self._client, None
        http, self._http = self._http, None
        loop, self._loop = self._loop, None
        if client is None:
            return
        try:
            client.close()  # the SDK's own (unused) sync httpx client
        except Exception:  # pragma: no cover - best effort
            pass
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            try:
                await client.aio.aclose()
            except Exception:  # pragma: no cover - best effort
                pass
            if http is not None and not http.is_closed:
                await http.aclose()

    def _model(self, model):
        model = (model or "").strip() or self.default_model
        return model[len("models/"):] if model.startswith("models/") else model

    # --- failures ----------------------------------------------------------------------

    def scrub(self, text):
        text = str(text or "")
        if self.api_key and self.api_key in text:
            text = text.replace(self.api_key, "***")
        return text[:MAX_MESSAGE_CHARS]

    def _error(self, exc):
        """The taxonomy error for an exception raised through the SDK, or None."""
        from google.genai import errors as genai_errors

        if isinstance(exc, errors.ProviderError):
            return exc
        if isinstance(exc, genai_errors.APIError):
            return self._api_error(exc)
        where = safe_url(self.base_url or "https://generativelanguage.googleapis.com")
        mapped = transport.transport_error(exc, name=self.name, where=where, scrub=self.scrub)
        if mapped is not None:
            return mapped
        if isinstance(exc, genai_errors.UnknownApiResponseError):
            return errors.ProtocolError(f"{self.name}: malformed answer from {where}")
        try:
            import pydantic
        except ImportError:  # pragma: no cover
            pydantic = None
        if pydantic is not None and isinstance(exc, pydantic.ValidationError):
            return errors.ProtocolError(f"{self.name}: unexpected answer shape from {where}")
        return None

    def _raise(self, exc):
        mapped = self._error(exc)
        if mapped is None:
            raise exc
        if mapped is exc:
            raise exc
        raise mapped from None

    def _api_error(self, exc):
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
            retry_after = _retry_delay(error)
        text = f"{self.name}: {message}"
        if status == 400 and _CONTEXT_LENGTH.search(message):
            return errors.ContextLengthExceeded(text)
        if status == 400 and ("API_KEY_INVALID" in orjson.dumps(error, default=str).decode()
                              or "api key not valid" in message.lower()):
            return errors.from_status(401, text)
        return errors.from_status(status, text, code=exc.status if isinstance(exc.status, str) else None,
                                  retry_after=retry_after)

    # --- request translation ---------------------------------------------------------

    def _config(self, body, system):
        from google.genai import types

        config = {"automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True)}
        if system:
            config["system_instruction"] = system
        options = sampling(body)
        if "max_tokens" in options:
            options["max_output_tokens"] = options.pop("max_tokens")
        if "stop" in options:
            options["stop_sequences"] = options.pop("stop")
        config.update(options)

        response_format = body.get("response_format")
        if isinstance(response_format, dict):
            kind = response_format.get("type")
            if kind == "json_object":
                config["response_mime_type"] = "application/json"
            elif kind == "json_schema":
                config["response_mime_type"] = "application/json"
                schema = (response_format.get("json_schema") or {}).get("schema")
                if isinstance(schema, dict):
                    config["response_json_schema"] = schema

        tools = body.get("tools")
        if tools:
            declarations = []
            for tool in tools:
                if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                    kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
                    raise errors.CapabilityError(f"{self.name}: tools of type {kind!r} are not supported; only function tools.")
                function = tool.get("function") or {}
                if not function.get("name"):
                    raise errors.CapabilityError(f"{self.name}: a function tool has no name.")
                declaration = {"name": function["name"]}
                if function.get("description"):
                    declaration["description"] = function["description"]
                if isinstance(function.get("parameters"), dict) and function["parameters"]:
                    declaration["parameters_json_schema"] = function["parameters"]
                declarations.append(types.FunctionDeclaration(**declaration))
            config["tools"] = [types.Tool(function_declarations=declarations)]
            calling = _function_calling(body.get("tool_choice"))
            if calling is not None:
                config["tool_config"] = types.ToolConfig(function_calling_config=calling)
        return types.GenerateContentConfig(**config)

    def _contents(self, model, messages):
        """(system_instruction, contents) from OpenAI messages."""
        from google.genai import types

        system, contents, tool_names = [], [], {}

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
                text = _text_of(content)
                if text:
                    system.append(text)
            elif role == "user":
                add("user", self._parts(content))
            elif role == "assistant":
                parts = [part for part in self._parts(content) if part.text is None or part.text != ""]
                for call in message.get("tool_calls") or ():
                    function = (call or {}).get("function") or {}
                    name = function.get("name")
                    if not name:
                        continue
                    call_id = call.get("id")
                    if call_id:
                        tool_names[call_id] = name
                    part = types.Part(function_call=types.FunctionCall(
                        id=call_id if call_id and not call_id.startswith("call_") else None,
                        name=name, args=_arguments(function.get("arguments"))))
                    signature = self._signatures.get(call_id) if call_id else None
                    if signature is None and model.startswith("gemini-3") and not any(p.function_call for p in parts):
                        signature = DUMMY_SIGNATURE
                    if signature is not None:
                        part.thought_signature = signature
                    parts.append(part)
                add("model", parts)
            elif role in ("tool", "function"):
                call_id = message.get("tool_call_id")
                name = tool_names.get(call_id) or message.get("name")
                if not name:
                    raise errors.CapabilityError(
                        f"{self.name}: a tool message's tool_call_id {call_id!r} matches no earlier assistant tool call."
                    )
                add("user", [types.Part(function_response=types.FunctionResponse(
                    id=call_id if call_id and not call_id.startswith("call_") else None,
                    name=name, response=_tool_result(content)))])
            else:
                raise errors.CapabilityError(f"{self.name}: messages with role {role!r} are not supported.")
        return "\n\n".join(system) or None, contents

    def _parts(self, content):
        from google.genai import types

        if content is None:
            return []
        if isinstance(content, str):
            return [types.Part(text=content)] if content else []
        if not isinstance(content, list):
            return [types.Part(text=str(content))]
        parts = []
        for item in content:
            if isinstance(item, str):
                parts.append(types.Part(text=item))
                continue
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind in ("text", "input_text"):
                parts.append(types.Part(text=item.get("text") or ""))
            elif kind == "image_url":
                image = item.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                parts.append(self._media_part(url, "image"))
            elif kind == "input_audio":
                audio = item.get("input_audio") or {}
                data = _b64decode(audio.get("data"))
                if data is None:
                    raise errors.CapabilityError(f"{self.name}: input_audio data must be base64.")
                fmt = (audio.get("format") or "wav").lower()
                parts.append(types.Part(inline_data=types.Blob(mime_type=f"audio/{fmt}", data=data)))
            elif kind == "file":
                file = item.get("file") or {}
                data_url = file.get("file_data")
                if not isinstance(data_url, str) or not data_url:
                    raise errors.CapabilityError(f"{self.name}: file parts must carry inline file_data.")
                if not data_url.startswith("data:"):
                    mime = mimetypes.guess_type(file.get("filename") or "")[0] or "application/pdf"
                    data = _b64decode(data_url)
                    if data is None:
                        raise errors.CapabilityError(f"{self.name}: file_data must be base64 or a data URL.")
                    parts.append(types.Part(inline_data=types.Blob(mime_type=mime, data=data)))
                else:
                    parts.append(self._media_part(data_url, "file"))
            else:
                raise errors.CapabilityError(f"{self.name}: message content of type {kind!r} is not supported by Google.")
        return parts

    def _media_part(self, url, what):
        from google.genai import types

        if not isinstance(url, str) or not url:
            raise errors.CapabilityError(f"{self.name}: an {what} part has no URL.")
        if url.startswith("data:"):
            header, sep, payload = url.partition(",")
            if not sep:
                raise errors.CapabilityError(f"{self.name}: malformed data URL in an {what} part.")
            meta = header[len("data:"):].split(";")
            mime = meta[0] or "text/plain"
            if "base64" in (m.strip().lower() for m in meta[1:]):
                data = _b64decode(payload)
                if data is None:
                    raise errors.CapabilityError(f"{self.name}: the {what} data URL is not valid base64.")
            else:
                data = unquote_to_bytes(payload)
            return types.Part(inline_data=types.Blob(mime_type=mime, data=data))
        lowered = url.lower()
        if lowered.startswith("gs://") or lowered.startswith("https://generativelanguage.googleapis.com/"):
            mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or ("image/jpeg" if what == "image" else None)
            return types.Part(file_data=types.FileData(file_uri=url, mime_type=mime))
        raise errors.CapabilityError(
            f"{self.name}: Gemini cannot fetch remote {what} URLs; send the {what} inline as a "
            f"data:<mime>;base64 URL (or a gs:// / Gemini Files API URI)."
        )

    def _request(self, model, body):
        import pydantic

        model = self._model(model)
        try:
            system, contents = self._contents(model, body.get("messages"))
            if not contents:
                raise errors.CapabilityError(f"{self.name}: Gemini needs at least one user or assistant message.")
            return model, contents, self._config(body, system)
        except pydantic.ValidationError as exc:
            # A value the SDK's request types refuse (what Gemini would answer with a 400).
            first = exc.errors()[0] if exc.errors() else {}
            where = ".".join(str(item) for item in first.get("loc", ()))
            detail = self.scrub(f"{where}: {first.get('msg', 'invalid value')}")
            raise errors.UpstreamRequestError(f"{self.name}: invalid request for Gemini ({detail})", upstream_status=400) from None

    # --- answer translation ----------------------------------------------------------

    def _remember_signature(self, call_id, signature):
        if not signature:
            return
        self._signatures[call_id] = signature
        self._signatures.move_to_end(call_id)
        while len(self._signatures) > SIGNATURE_CACHE_SIZE:
            self._signatures.popitem(last=False)

    def _tool_call(self, function_call, signature):
        call_id = function_call.id or new_call_id()
        self._remember_signature(call_id, signature)
        arguments = orjson.dumps(function_call.args or {}, default=str).decode()
        return {"id": call_id, "type": "function", "function": {"name": function_call.name or "", "arguments": arguments}}

    def _check_prompt(self, response):
        feedback = getattr(response, "prompt_feedback", None)
        reason = _enum_name(getattr(feedback, "block_reason", None)) if feedback else None
        if reason and reason != "BLOCKED_REASON_UNSPECIFIED":
            detail = getattr(feedback, "block_reason_message", None)
            raise errors.Blocked(
                f"{self.name}: Google blocked the prompt (block_reason {reason})" + (f": {self.scrub(detail)}" if detail else "")
            )

    def _finish_reason(self, reason, has_text, has_tool_calls):
        """OpenAI's finish_reason for a Gemini one (plain and streamed answers alike)."""
        if reason == "MALFORMED_FUNCTION_CALL":
            raise errors.ProtocolError(f"{self.name}: the model produced a malformed function call")
        if reason == "MAX_TOKENS":
            if not has_text and not has_tool_calls:
                raise errors.Truncated(f"{self.name}: Gemini stopped at the max_tokens limit before producing "
                                       "any output (finish_reason MAX_TOKENS).")
            return "length"
        return "tool_calls" if has_tool_calls else "stop"

    def _blocked(self, candidate, reason):
        categories = [
            _enum_name(rating.category) for rating in (getattr(candidate, "safety_ratings", None) or ())
            if getattr(rating, "blocked", False) and rating.category is not None
        ]
        message = f"{self.name}: Google blocked the answer (finish_reason {reason})"
        if categories:
            message += f": {', '.join(categories)}"
        detail = getattr(candidate, "finish_message", None)
        if detail:
            message += f" ({self.scrub(detail)})"
        return errors.Blocked(message)

    def _usage(self, metadata):
        if metadata is None:
            return None
        completion = (metadata.candidates_token_count or 0) + (getattr(metadata, "thoughts_token_count", None) or 0)
        return base.usage(metadata.prompt_token_count, completion)

    # --- the interface ---------------------------------------------------------------

    async def chat(self, model, body):
        model, contents, config = self._request(model, body)
        try:
            response = await self.client.aio.models.generate_content(model=model, contents=contents, config=config)
        except Exception as exc:
            self._raise(exc)
        self._check_prompt(response)
        if not response.candidates:
            raise errors.ProtocolError(f"{self.name}: the answer has no candidates")
        candidate = response.candidates[0]
        reason = _enum_name(candidate.finish_reason)
        if reason in BLOCK_REASONS:
            raise self._blocked(candidate, reason)

        texts, thoughts, tool_calls = [], [], []
        for part in (candidate.content.parts if candidate.content else None) or ():
            if part.function_call is not None:
                tool_calls.append(self._tool_call(part.function_call, part.thought_signature))
            elif part.text is not None:
                (thoughts if part.thought else texts).append(part.text)
        text = "".join(texts)
        finish = self._finish_reason(reason, bool(text), bool(tool_calls))
        if finish == "stop" and not text and reason not in (None, "STOP", "FINISH_REASON_UNSPECIFIED"):
            raise errors.ProtocolError(f"{self.name}: empty answer (finish_reason {reason})")

        message = {"role": "assistant", "content": text if text or not tool_calls else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        return base.completion(model, message, finish, self._usage(response.usage_metadata),
                               id=_response_id(response))

    async def chat_stream(self, model, body):
        model, contents, config = self._request(model, body)
        id_, created = base.new_id(), int(time.time())
        role_sent = False
        tool_index = 0
        has_text = False
        finish = None
        usage = None
        try:
            stream = await self.client.aio.models.generate_content_stream(model=model, contents=contents, config=config)
        except Exception as exc:
            self._raise(exc)
        iterator = stream.__aiter__()
        while True:
            try:
                response = await iterator.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                self._raise(exc)
            self._check_prompt(response)
            if response.usage_metadata is not None:
                usage = self._usage(response.usage_metadata)
            if not response.candidates:
                continue
            candidate = response.candidates[0]
            reason = _enum_name(candidate.finish_reason)
            if reason in BLOCK_REASONS:
                raise self._blocked(candidate, reason)
            for part in (candidate.content.parts if candidate.content else None) or ():
                delta = {}
                if part.function_call is not None:
                    call = self._tool_call(part.function_call, part.thought_signature)
                    call["index"] = tool_index
                    tool_index += 1
                    delta["tool_calls"] = [call]
                elif part.text:
                    if part.thought:
                        delta["reasoning_content"] = part.text
                    else:
                        delta["content"] = part.text
                        has_text = True
                if not delta:
                    continue
                if not role_sent:
                    delta = {"role": "assistant", **delta}
                    role_sent = True
                yield base.chunk(model, delta, id=id_, created=created)
            if reason and reason != "FINISH_REASON_UNSPECIFIED":
                finish = reason

        if finish is not None:
            openai_finish = self._finish_reason(finish, has_text, bool(tool_index))
            delta = {} if role_sent else {"role": "assistant", "content": ""}
            yield base.chunk(model, delta, openai_finish, id=id_, created=created)
        if usage is not None:
            yield base.usage_chunk(model, usage, id=id_, created=created)

    async def embed(self, model, body):
        from google.genai import types

        model = self._model(model)
        inputs = base.embedding_inputs(body)
        config = None
        if body.get("dimensions"):
            config = types.EmbedContentConfig(output_dimensionality=int(body["dimensions"]))
        try:
            response = await self.client.aio.models.embed_content(model=model, contents=inputs, config=config)
        except Exception as exc:
            self._raise(exc)
        embeddings = response.embeddings or []
        if len(embeddings) != len(inputs):
            raise errors.ProtocolError(f"{self.name}: the embeddings answer does not hold one vector per input")
        vectors = [[float(value) for value in (embedding.values or [])] for embedding in embeddings]
        metadata = getattr(response, "usage_metadata", None)
        prompt_tokens = getattr(metadata, "prompt_token_count", None) if metadata is not None else None
        return base.embeddings(model, vectors, prompt_tokens or 0)

    async def list_models(self):
        ids = []
        try:
            pager = await self.client.aio.models.list(config={"page_size": 1000})
            pages = 0
            while True:
                for item in pager.page:
                    name = item.name or ""
                    if name.startswith("models/"):
                        name = name[len("models/"):]
                    if name:
                        ids.append(name)
                pages += 1
                if not pager.config.get("page_token") or pages >= MAX_MODEL_PAGES:
                    break
                await pager.next_page()
        except Exception as exc:
            self._raise(exc)
        return ids

    async def probe(self):
        try:
            await self.client.aio.models.list(config={"page_size": 1})
        except Exception as exc:
            self._raise(exc)

    async def supports_tools(self, model):
        return True


# --- helpers ----------------------------------------------------------------------------


def _text_of(content):
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                texts.append(part.get("text") or "")
        return "\n".join(texts)
    return str(content)


def _arguments(value):
    """Function-call args as the JSON object Gemini needs."""
    if isinstance(value, dict):
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {"arguments": value}
        return parsed if isinstance(parsed, dict) else {"value": parsed}
    return {"value": value}


def _tool_result(content):
    text = _text_of(content)
    try:
        parsed = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    return {"result": text}


def _function_calling(choice):
    from google.genai import types

    if choice is None:
        return None
    if choice == "none":
        return types.FunctionCallingConfig(mode="NONE")
    if choice == "auto":
        return types.FunctionCallingConfig(mode="AUTO")
    if choice == "required":
        return types.FunctionCallingConfig(mode="ANY")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return types.FunctionCallingConfig(mode="ANY", allowed_function_names=[name])
    return None


def _b64decode(data):
    if not isinstance(data, str):
        return None
    data = "".join(data.split())
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            return None


def _retry_delay(error):
    """Seconds from a google.rpc.RetryInfo detail (``"retryDelay": "37s"``), or None."""
    for detail in (error.get("details") if isinstance(error, dict) else None) or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay") or ""))
            if match:
                return float(match.group(1))
    return None


def _response_id(response):
    response_id = getattr(response, "response_id", None)
    return f"chatcmpl-{response_id}" if response_id else None


EVENT_END = re.compile(rb"\r?\n\r?\n")


class WellFormedEvents(httpx.AsyncByteStream):
    """An SSE body with the events whose data is not JSON left out (and logged)."""

    def __init__(self, inner, name):
        self.inner = inner
        self.name = name

    async def __aiter__(self):
        buffer = b""
        async for chunk in self.inner:
            buffer += chunk
            while (end := EVENT_END.search(buffer)) is not None:
                event, buffer = buffer[:end.end()], buffer[end.end():]
                if self._well_formed(event):
                    yield event
        if buffer.strip() and self._well_formed(buffer):
            yield buffer

    def _well_formed(self, event):
        data = b"\n".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        if not data:
            return True
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.warning("%s: skipped a malformed stream event: %r", self.name, data[:200])
            return False
        return True

    async def aclose(self):
        await self.inner.aclose()
