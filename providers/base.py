"""The provider interface every adapter implements, and the OpenAI shapes they return.

Adapters take the client's OpenAI request body (a dict they must not mutate: the router
hands the same body to every entry of a chain) plus the provider-side model name, and
answer in OpenAI shapes. Every failure is raised as a ``providers.errors`` class.
"""
import time
import uuid


class Provider:
    kind = None

    def __init__(self, name, *, base_url=None, api_key=None, timeout=120.0, connect_timeout=2.0,
                 max_concurrent=None, **options):
        self.name = name
        self.base_url = (base_url or "").rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_concurrent = max_concurrent
        self.options = options
        self.in_flight = 0

    def __repr__(self):
        # Never the key: reprs end up in logs.
        return f"<{type(self).__name__} {self.name} {self.base_url}>"

    # --- concurrency cap (SPEC §3 <PROVIDER>_MAX_CONCURRENT) ---------------------------

    def try_acquire(self):
        """Take an in-flight slot, or say the provider is saturated. Never blocks."""
        if self.max_concurrent is not None and self.in_flight >= self.max_concurrent:
            return False
        self.in_flight += 1
        return True

    def release(self):
        self.in_flight -= 1

    # --- what adapters implement ---------------------------------------------------

    async def chat(self, model, body):
        """A whole chat answer as an OpenAI ``chat.completion`` dict."""
        raise NotImplementedError

    def chat_stream(self, model, body):
        """An async iterator of OpenAI ``chat.completion.chunk`` dicts.

        Errors before the first chunk are raised from the first ``__anext__``. A final
        chunk with ``choices: []`` and ``usage`` is yielded whenever usage is known (the
        router drops it unless the client asked for it). Malformed upstream events are
        skipped; an upstream that ends without its end marker just ends the iterator.
        """
        raise NotImplementedError

    async def embed(self, model, body):
        """An OpenAI embeddings ``list`` dict with float vectors."""
        raise NotImplementedError

    async def list_models(self):
        """The provider's model ids (without the provider prefix)."""
        raise NotImplementedError

    async def probe(self):
        """A cheap liveness check; returns None or raises a ProviderError."""
        raise NotImplementedError

    async def supports_tools(self, model):
        return True

    async def aclose(self):
        pass


# --- OpenAI shapes shared by the adapters that translate --------------------------------


def new_id(prefix="chatcmpl"):
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens, completion_tokens):
    prompt_tokens = int(prompt_tokens or 0)
    completion_tokens = int(completion_tokens or 0)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(model, message, finish_reason, usage=None, *, id=None, created=None):
    return {
        "id": id or new_id(),
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage,
    }


def chunk(model, delta, finish_reason=None, *, id, created):
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage_chunk(model, usage, *, id, created):
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage}


def embeddings(model, vectors, prompt_tokens=0):
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": int(prompt_tokens or 0), "total_tokens": int(prompt_tokens or 0)},
    }


def embedding_inputs(body):
    """The embeddings ``input`` as a list of strings (token-id inputs are refused)."""
    from manallm.errors import InvalidRequest

    value = body.get("input")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        raise InvalidRequest("'input' must be a non-empty string or a list of strings.", param="input")
    return items


SAMPLING_FIELDS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")


def sampling(body):
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


def has_content(chunk):
    """True when a chunk carries what counts as the first token: text or a tool call."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
            return True
    return False
