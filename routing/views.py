"""The OpenAI-compatible endpoints (README#endpoints): thin async views over the router.

Plain async Django views (manallm.views.openai_view), not DRF: this is the hot path, and
it must not pay DRF's per-request work nor a query (the router reads memory only).
"""
import asyncio
import base64
from array import array
from urllib.parse import unquote

import orjson
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from consumers import scope
from consumers.limits import limiter
from manallm import drain
from manallm.errors import ModelNotFound, json_response
from manallm.exchange import Exchange
from manallm.views import openai_view

from . import cache, catalog, schema
from .router import router
from .served import Served
from .streams import Relay
from .table import aliases


async def begin(request: HttpRequest, body: dict, kind: str) -> Exchange:
    """The request's bookkeeping record (manallm.exchange), finished by openai_view or sse();
    the consumer's limits are checked here, before anything goes upstream."""
    exchange = Exchange(getattr(request, "request_id", ""), getattr(request, "consumer", None) or "anonymous",
                        kind, streaming=bool(body.get("stream")), requested=aliases.requested_name(body.get("model")))
    request.exchange = exchange
    scope.check(exchange.consumer, exchange.requested)  # 403 before routing (README#consumers)
    await limiter.admit(exchange)
    return exchange


def served_by(exchange: Exchange, served: Served) -> None:
    exchange.target = served.target
    exchange.alias = served.alias
    exchange.attempts = [attempt.to_api() for attempt in served.attempts]


@openai_view("POST")
async def chat_completions(request: HttpRequest) -> HttpResponse:
    body = schema.validate_chat(schema.parse_json(request))
    exchange = await begin(request, body, "chat")
    cached = cache.begin(request, body, exchange)  # None unless the alias caches (README#response-cache)
    if cached is not None and (hit := await cached.lookup()) is not None:
        return hit
    if body.get("stream"):
        served = await router.chat_stream(body)
        served_by(exchange, served)
        exchange.first_token_seconds = served.value.first_token_seconds
        try:
            events = served.value if cached is None else cached.recorder(served)
            response = StreamingHttpResponse(sse(events, exchange), content_type="text/event-stream",
                                             headers=served.headers())
        except BaseException:
            await served.value.aclose()  # frees the slot and the upstream
            raise
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        if cached is not None:
            response["X-Mana-LLM-Cache"] = "miss"
        return response
    served = await router.chat(body)
    served_by(exchange, served)
    exchange.add_usage(served.value.get("usage"))
    response = json_response(served.value, headers=served.headers())
    if cached is not None:
        cached.answered(response, served)
    return response


async def sse(events: Relay, exchange: Exchange | None = None):
    """OpenAI's framing: one `data:` line per event, then `data: [DONE]`.

    A stream still open when a stopping server's grace runs out ends with the shutdown
    error event and `[DONE]` (manallm.drain, README#running-several-replicas). The
    request's Exchange ends here, with the stream: its usage, and how the stream ended.
    """
    task = drain.stream_opened()
    try:
        async for event in events:
            yield b"data: " + orjson.dumps(event) + b"\n\n"
        yield b"data: [DONE]\n\n"
    except asyncio.CancelledError:
        if exchange is not None:
            exchange.error_type = "client_disconnected"
        if not drain.ending(task):
            raise  # the client left
        if exchange is not None:
            exchange.error_type = "server_shutdown"
        yield b"data: " + orjson.dumps(drain.SHUTDOWN_EVENT) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        drain.stream_closed(task)
        await events.aclose()
        if exchange is not None:
            _stream_ended(events, exchange)


def _stream_ended(relay: Relay, exchange: Exchange) -> None:
    exchange.add_usage(relay.usage)
    if relay.failure is not None:
        exchange.error_type = relay.failure.reason
    exchange.finish()


@openai_view("POST")
async def embeddings(request: HttpRequest) -> HttpResponse:
    body = schema.validate_embeddings(schema.parse_json(request))
    exchange = await begin(request, body, "embeddings")
    cached = cache.begin(request, body, exchange)
    if cached is not None and (hit := await cached.lookup()) is not None:
        return hit
    served = await router.embed(body)
    served_by(exchange, served)
    exchange.add_usage(served.value.get("usage"))
    if body.get("encoding_format") == "base64":
        for item in served.value["data"]:
            item["embedding"] = base64.b64encode(array("f", item["embedding"]).tobytes()).decode()
    response = json_response(served.value, headers=served.headers())
    if cached is not None:
        cached.answered(response, served)
    return response


@openai_view("GET")
async def models_list(request: HttpRequest) -> HttpResponse:
    return json_response({"object": "list", "data": await catalog.all_models()})


@openai_view("GET")
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponse:
    model_id = unquote(model_id)
    found = await catalog.find(model_id)
    if found is None:
        raise ModelNotFound(f"Unknown model {model_id!r}.", param="model")
    return json_response(found)
