"""The plain async views' conventions for /v1: the OpenAI hot path and the health reads.

``openai_view`` is the one wrapper those views share (routing's and health's), kept here
at the bottom so health need not import routing. The management API is DRF instead
(routing.api, health.api); its errors go through manallm.errors.drf_exception_handler.
``not_found`` and ``server_error`` are handler404/handler500: /v1 clients never see HTML
or a traceback.
"""
import functools
import logging
from collections.abc import Awaitable, Callable

from django.http import HttpRequest, HttpResponse

from .errors import APIError, MethodNotAllowed, NotFound, server_error as server_error_body
from .logs import request_id_var

logger = logging.getLogger("manallm.api")

AsyncView = Callable[..., Awaitable[HttpResponse]]


def openai_view(*methods: str) -> Callable[[AsyncView], AsyncView]:
    """Wrap an async view: a wrong method is a 405 naming the allowed ones (``Allow``), an
    APIError becomes its response, anything unexpected a logged 500 ``server_error`` with
    the request id — always in the OpenAI envelope, without DRF's per-request cost."""
    allow = ", ".join(methods)
    use = " or ".join(methods)

    def decorate(view: AsyncView) -> AsyncView:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method not in methods:
                return MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {use}.",
                                        headers={"Allow": allow}).response()
            try:
                return await view(request, *args, **kwargs)
            except APIError as error:
                return error.response()
            except Exception:
                logger.exception("unexpected error serving %s %s", request.method, request.path)
                return server_error(request)

        return wrapper

    return decorate


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return NotFound(f"No route for {request.method} {request.path}.").response()


def server_error(request: HttpRequest) -> HttpResponse:
    request_id = getattr(request, "request_id", None) or request_id_var.get()
    return server_error_body(request_id).response()
