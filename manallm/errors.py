"""The OpenAI error envelope, shared by every view, the router and every adapter."""
import logging

import orjson
from django.http import HttpResponse

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


def json_response(data, status=200, headers=None):
    """A JSON response with its length set (the /v1 paths skip CommonMiddleware)."""
    content = orjson.dumps(data)
    response = HttpResponse(content, status=status, headers=headers, content_type="application/json")
    response["Content-Length"] = str(len(content))
    return response


def server_error(request_id):
    return APIError(f"Internal server error (request id {request_id}).", code="internal_error")


def drf_exception_handler(exc, context):
    """DRF views answer in the same envelope as the rest of /v1."""
    from rest_framework import exceptions as drf

    if isinstance(exc, APIError):
        return _drf_response(exc)
    if isinstance(exc, drf.ValidationError):
        return _drf_response(validation_error(exc.detail))
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        return _drf_response(AuthenticationFailed(str(exc.detail)))
    if isinstance(exc, drf.PermissionDenied):
        return _drf_response(PermissionDenied(str(exc.detail)))
    if isinstance(exc, drf.ParseError):
        return _drf_response(InvalidRequest(str(exc.detail), code="invalid_json"))
    if isinstance(exc, drf.UnsupportedMediaType):
        return _drf_response(InvalidRequest(str(exc.detail), status=415, code="unsupported_media_type"))
    if isinstance(exc, drf.MethodNotAllowed):
        return _drf_response(MethodNotAllowed(str(exc.detail)))
    if isinstance(exc, drf.NotFound):
        return _drf_response(NotFound(str(exc.detail)))
    if isinstance(exc, drf.APIException):
        return _drf_response(APIError(str(exc.detail), status=exc.status_code, type="invalid_request_error"))
    return None


def validation_error(detail):
    """Turn a field -> messages mapping into one 400 naming the first bad field."""
    param, message = _first_error(detail)
    return InvalidRequest(f"{param}: {message}" if param else message, param=param, code="invalid_value")


def _first_error(detail, prefix=None):
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = None if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else str(key))
            return _first_error(value, name or prefix)
    if isinstance(detail, list) and detail:
        return _first_error(detail[0], prefix)
    return prefix, str(detail)


def _drf_response(error):
    from rest_framework.response import Response

    return Response(error.body(), status=error.status, headers=error.headers)
