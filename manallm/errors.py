"""The OpenAI error envelope, shared by every view, the router and every adapter.

Plain views return ``error.response()``; DRF views raise and ``drf_exception_handler``
(settings.REST_FRAMEWORK) renders the same body.
"""
import logging

import orjson
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

logger = logging.getLogger("manallm")


class APIError(Exception):
    """An error a client sees: an HTTP status and an OpenAI `{"error": {...}}` body."""

    status = 500
    type = "server_error"
    code = None

    def __init__(self, message, *, status=None, type=None, code=None, param=None, headers=None, extra=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        # The chain entries passed over before this error ({"model", "reason"}), for the
        # request's bookkeeping (manallm.exchange); set by the router, not sent as such.
        self.attempts: list[dict[str, str]] = []

    def body(self):
        error = {"message": self.message, "type": self.type, "code": self.code, "param": self.param}
        error.update(self.extra)
        return {"error": error}

    def response(self):
        return json_response(self.body(), self.status, self.headers)


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"
    code = "admin_key_required"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(APIError):
    status = 404
    type = "model_not_found"
    code = "model_not_found"


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ServiceUnavailable(APIError):
    """A management write the database could not commit: nothing changed anywhere
    (README#running-several-replicas)."""

    status = 503
    type = "service_unavailable"
    code = "database_unavailable"


def json_response(data, status=200, headers=None):
    """A JSON response with its length set (the /v1 paths skip CommonMiddleware)."""
    content = orjson.dumps(data)
    response = HttpResponse(content, status=status, headers=headers, content_type="application/json")
    response["Content-Length"] = str(len(content))
    # Known, so the metrics middleware need not parse it back out of the Content-Type.
    response._charset = "utf-8"
    return response


def server_error(request_id):
    return APIError(f"Internal server error (request id {request_id}).", code="internal_error")


def drf_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's EXCEPTION_HANDLER: the management API answers in the same envelope as the rest
    of /v1. A database that cannot be reached (a management write during an outage) is a
    503 ``service_unavailable``. Anything else returns None: DRF re-raises it and
    handler500 answers."""
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("management write refused, the database is unreachable: %s", exc)
        exc = ServiceUnavailable("The database is unreachable, so the change was not made; retry when it is back.")
    elif isinstance(exc, drf.ValidationError):
        exc = validation_error(exc.detail)
    elif isinstance(exc, drf.APIException):
        error_class, options = next((mapped for drf_class, *mapped in _DRF_ERRORS if isinstance(exc, drf_class)),
                                    (APIError, {"type": "invalid_request_error", "status": exc.status_code}))
        exc = error_class(str(exc.detail), **options)
    if isinstance(exc, APIError):
        return Response(exc.body(), status=exc.status, headers=exc.headers)
    return None


# DRF's exceptions as the error classes above (the first match wins).
_DRF_ERRORS = (
    (drf.NotAuthenticated | drf.AuthenticationFailed, AuthenticationFailed, {}),
    (drf.PermissionDenied, PermissionDenied, {}),
    (drf.ParseError, InvalidRequest, {"code": "invalid_json"}),
    (drf.UnsupportedMediaType, InvalidRequest, {"status": 415, "code": "unsupported_media_type"}),
    (drf.MethodNotAllowed, MethodNotAllowed, {}),
    (drf.NotFound, NotFound, {}),
)


def validation_error(detail) -> InvalidRequest:
    """Turn a serializer's field -> messages mapping into one 400 naming the first bad field.

    The message names the field unless it already does (routing.validators' messages
    name the alias and the field); the code is the error's own unless DRF's generic one.
    """
    param, message = _first_error(detail)
    code = getattr(message, "code", None)
    if param and param not in message:
        message = f"{param}: {message}"
    return InvalidRequest(str(message), param=param, code=code if code not in (None, "invalid") else "invalid_value")


def _first_error(detail, prefix=None):
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = None if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else str(key))
            return _first_error(value, name or prefix)
    if isinstance(detail, list) and detail:
        return _first_error(detail[0], prefix)
    return prefix, detail
