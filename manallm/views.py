"""Error pages in the OpenAI envelope: /v1 clients never see HTML or a traceback."""
from .errors import NotFound, server_error as server_error_body
from .logs import request_id_var


def not_found(request, exception=None):
    return NotFound(f"No route for {request.method} {request.path}.").response()


def server_error(request):
    request_id = getattr(request, "request_id", None) or request_id_var.get()
    return server_error_body(request_id).response()
