"""The OpenAI-compatible endpoints (SPEC §5): thin async views over the router."""
import base64
import functools
import logging
from array import array
from urllib.parse import unquote

import orjson
from django.conf import settings
from django.http import StreamingHttpResponse

from manallm.errors import APIError, MethodNotAllowed, ModelNotFound, json_response, server_error

from . import catalog, schema
from .router import router

logger = logging.getLogger("manallm.api")


def api_view(*methods):
    """An async /v1 view: method check, every failure in the OpenAI envelope."""

    def decorate(view):
        @functools.wraps(view)
        async def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                return MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use "
                                        f"{' or '.join(methods)}.", headers={"Allow": ", ".join(methods)}).response()
            try:
                return await view(request, *args, **kwargs)
            except APIError as error:
                return error.response()
            except Exception:
                logger.exception("unexpected error serving %s %s", request.method, request.path)
                return server_error(getattr(request, "request_id", "-")).response()

        return wrapper

    return decorate


@api_view("POST")
async def chat_completions(request):
    body = schema.validate_chat(schema.parse_json(request, settings.MAX_REQUEST_BYTES))
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
    """OpenAI's framing: one `data:` line per event, then `data: [DONE]`."""
    try:
        async for event in events:
            yield b"data: " + orjson.dumps(event) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()


@api_view("POST")
async def embeddings(request):
    body = schema.validate_embeddings(schema.parse_json(request, settings.MAX_REQUEST_BYTES))
    served = await router.embed(body)
    if body.get("encoding_format") == "base64":
        for item in served.value["data"]:
            item["embedding"] = base64.b64encode(array("f", item["embedding"]).tobytes()).decode()
    return json_response(served.value, headers=served.headers())


@api_view("GET")
async def models_list(request):
    return json_response({"object": "list", "data": await catalog.all_models()})


@api_view("GET")
async def model_detail(request, model_id):
    model_id = unquote(model_id)
    found = await catalog.find(model_id)
    if found is None:
        raise ModelNotFound(f"Unknown model {model_id!r}.", param="model")
    return json_response(found)
