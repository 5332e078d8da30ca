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

from manallm import drain
from manallm.errors import ModelNotFound, json_response
from manallm.views import openai_view

from . import catalog, schema
from .router import router


@openai_view("POST")
async def chat_completions(request: HttpRequest) -> HttpResponse:
    body = schema.validate_chat(schema.parse_json(request))
    if body.get("stream"):
        served = await router.chat_stream(body)
        try:
            response = StreamingHttpResponse(sse(served.value), content_type="text/event-stream",
                                             headers=served.headers())
        except BaseException:
            await served.value.aclose()  # frees the slot and the upstream
            raise
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
    served = await router.chat(body)
    return json_response(served.value, headers=served.headers())


async def sse(events):
    """OpenAI's framing: one `data:` line per event, then `data: [DONE]`.

    A stream still open when a stopping server's grace runs out ends with the shutdown
    error event and `[DONE]` (manallm.drain, README#running-several-replicas).
    """
    task = drain.stream_opened()
    try:
        async for event in events:
            yield b"data: " + orjson.dumps(event) + b"\n\n"
        yield b"data: [DONE]\n\n"
    except asyncio.CancelledError:
        if not drain.ending(task):
            raise  # the client left
        yield b"data: " + orjson.dumps(drain.SHUTDOWN_EVENT) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        drain.stream_closed(task)
        await events.aclose()


@openai_view("POST")
async def embeddings(request: HttpRequest) -> HttpResponse:
    body = schema.validate_embeddings(schema.parse_json(request))
    served = await router.embed(body)
    if body.get("encoding_format") == "base64":
        for item in served.value["data"]:
            item["embedding"] = base64.b64encode(array("f", item["embedding"]).tobytes()).decode()
    return json_response(served.value, headers=served.headers())


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
