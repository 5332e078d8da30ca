"""POST /v1/health/<provider>/reset (README#endpoints): the operator closes a provider's breakers.

With a body ``{"model": "<model>"}`` only that deployment's breaker (``provider/model``)
is closed, as the health dashboard's per-deployment reset does; the model name goes in
the body because it may contain slashes (``anthropic/claude-3-haiku``).

A management write, so DRF like the alias API: the admin key, or a staff session that
carries the CSRF token (manallm.auth). A sync view, as the admin's reset action: with no
event loop in its thread the board writes the rows before the response goes out.
"""
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from manallm.auth import ManagementAccess, StaffSession
from manallm.errors import InvalidRequest, NotFound
from manallm.jsonbody import JSONBodyParser
from providers import registry

from .board import breakers
from .breaker import breaker_key
from .views import provider_entry


class BreakerResetView(APIView):
    authentication_classes = [StaffSession]
    permission_classes = [ManagementAccess]
    # The body holds at most "model"; a session's CSRF check reads a POST's form fields
    # (a form's csrfmiddlewaretoken): parse what a browser posts instead of answering 415.
    parser_classes = [FormParser, MultiPartParser, JSONBodyParser]  # JSON: manallm.jsonbody's limits
    MAX_MODEL = 300

    def post(self, request: Request, provider: str) -> Response:
        configured = registry.configured()
        if provider not in configured:
            raise NotFound(f"Unknown or unconfigured provider '{provider}'; configured: "
                           f"{', '.join(sorted(configured)) or 'none'}.", param="provider")
        model = self._model(request)
        if model:
            if breakers.get(provider, model) is None:  # only a breaker the board knows: nothing else is written
                raise NotFound(f"No breaker state for deployment '{provider}/{model}'.", param="model")
            breakers.reset_keys([breaker_key(provider, model)])
        else:
            breakers.reset(provider)
        return Response({"provider": provider, **provider_entry(provider, configured[provider])})

    def _model(self, request: Request) -> str | None:
        """The deployment to reset (``model`` in the body), or None for the whole provider."""
        model = request.data.get("model") if hasattr(request.data, "get") else None
        if model is None or model == "":
            return None
        if not isinstance(model, str) or len(model) > self.MAX_MODEL:
            raise InvalidRequest(f"'model' must be a model name of at most {self.MAX_MODEL} characters (the "
                                 "deployment to reset), or absent to reset the whole provider.", param="model")
        return model
