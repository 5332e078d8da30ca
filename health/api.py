"""POST /v1/health/<provider>/reset (README#endpoints): the operator closes a provider's breakers.

A management write, so DRF like the alias API: the admin key, or a staff session that
carries the CSRF token (manallm.auth). A sync view, as the admin's reset action: with no
event loop in its thread the board writes the rows before the response goes out.
"""
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from manallm.auth import ManagementAccess, StaffSession
from manallm.errors import NotFound
from manallm.jsonbody import JSONBodyParser
from providers import registry

from .board import breakers
from .views import provider_entry


class BreakerResetView(APIView):
    authentication_classes = [StaffSession]
    permission_classes = [ManagementAccess]
    # The body is ignored, but a session's CSRF check reads a POST's form fields (a
    # form's csrfmiddlewaretoken): parse what a browser posts instead of answering 415.
    parser_classes = [FormParser, MultiPartParser, JSONBodyParser]  # JSON: manallm.jsonbody's limits

    def post(self, request: Request, provider: str) -> Response:
        configured = registry.configured()
        if provider not in configured:
            raise NotFound(f"Unknown or unconfigured provider '{provider}'; configured: "
                           f"{', '.join(sorted(configured)) or 'none'}.", param="provider")
        breakers.reset(provider)
        return Response({"provider": provider, **provider_entry(provider, configured[provider])})
