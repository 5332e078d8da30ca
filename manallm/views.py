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
                response = await view(request, *args, **kwargs)
            except APIError as error:
                response = error.response()
                _ended(request, response, error)
                return response
            except Exception:
                logger.exception("unexpected error serving %s %s", request.method, request.path)
                response = server_error(request)
                _ended(request, response, None)
                return response
            if not response.streaming:  # a stream's exchange ends with its last event (routing.views.sse)
                _ended(request, response, None)
            return response

        return wrapper

    return decorate


def _ended(request: HttpRequest, response: HttpResponse, error: APIError | None) -> None:
    """Finish the request's Exchange (manallm.exchange), if its view began one."""
    exchange = getattr(request, "exchange", None)
    if exchange is None:
        return
    exchange.status = response.status_code
    if response.status_code >= 400:
        exchange.error_type = error.type if error is not None else "server_error"
        exchange.attempts = getattr(error, "attempts", None) or exchange.attempts
    exchange.finish()


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return NotFound(f"No route for {request.method} {request.path}.").response()


def server_error(request: HttpRequest) -> HttpResponse:
    request_id = getattr(request, "request_id", None) or request_id_var.get()
    return server_error_body(request_id).response()
