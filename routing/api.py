"""The alias management API (README#endpoints): GET /v1/aliases, GET/PUT/DELETE /v1/aliases/<name>,
GET /v1/aliases/<name>/route (the route preview) and GET /v1/aliases/<name>/history.

DRF as DRF: a ViewSet on a router, AliasSerializer for validation and representation,
manallm.auth for who may write, manallm.errors.drf_exception_handler for the envelope.
Reads answer from the in-memory alias table, caught up with the database first when it
answers (one query on the revision row), so they keep working through a database outage;
writes go to the database, and one it cannot commit is a 503 (README#running-several-replicas).
"""
import logging

from django.db import DatabaseError
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from manallm.auth import ManagementAccess, StaffSession, require_admin
from manallm.errors import InvalidRequest, ModelNotFound
from manallm.jsonbody import JSONBodyParser

from . import preview
from .models import Alias, AliasChange, DefaultAliasProtected, recorded
from .serializers import AliasChangeSerializer, AliasSerializer
from .table import Snapshot, aliases

logger = logging.getLogger("manallm.routing")


class AdminReads(ManagementAccess):
    """Reads that need the admin key too (the history says who changed what)."""

    def has_permission(self, request, view) -> bool:
        require_admin(request._request)
        return True


class AliasViewSet(viewsets.ViewSet):
    authentication_classes = [StaffSession]
    permission_classes = [ManagementAccess]
    parser_classes = [JSONBodyParser]  # the one body parser and its limits
    lookup_field = "name"
    # Names hold a slash (mana/x, or mana%2Fx decoded by the server); any character, a line
    # break included, reaches the validator and its 400 rather than a 404.
    lookup_value_regex = r"[\s\S]+"

    def alias_or_404(self, name: str) -> Alias:
        try:
            return Alias.objects.get(name=name)
        except Alias.DoesNotExist:
            raise ModelNotFound(f"Unknown alias {name!r}.", param="name") from None

    def list(self, request: Request) -> Response:
        table = current_aliases()
        views = [table.aliases[name] for name in sorted(table.aliases)]
        return Response({"default": table.default, "aliases": AliasSerializer(views, many=True).data})

    def retrieve(self, request: Request, name: str) -> Response:
        alias = current_aliases().aliases.get(name)
        if alias is None:
            raise ModelNotFound(f"Unknown alias {name!r}.", param="name")
        return Response(AliasSerializer(alias).data)

    def update(self, request: Request, name: str) -> Response:
        """PUT creates or replaces the alias whole (201 or 200)."""
        serializer = AliasSerializer(data=request.data, context={"name": name})
        serializer.is_valid(raise_exception=True)
        with recorded(api_actor(request)):
            serializer.save()
        status_code = status.HTTP_201_CREATED if serializer.created else status.HTTP_200_OK
        return Response(serializer.data, status=status_code)

    def destroy(self, request: Request, name: str) -> Response:
        try:
            with recorded(api_actor(request)):
                self.alias_or_404(name).delete()
        except DefaultAliasProtected as exc:
            raise InvalidRequest(str(exc), param=exc.field, code=exc.code) from exc
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["get"])
    def route(self, request: Request, name: str) -> Response:
        """The route preview (README#operator-console): this process's memory, no upstream call."""
        return Response(preview.route(name))

    @action(detail=True, methods=["get"], permission_classes=[AdminReads])
    def history(self, request: Request, name: str) -> Response:
        """Every recorded change of the alias, newest first; a deleted alias's too."""
        changes = AliasChange.objects.filter(alias=name)
        if not changes.exists() and not Alias.objects.filter(name=name).exists():
            raise ModelNotFound(f"Unknown alias {name!r}: it has no history.", param="name")
        return Response({"alias": name, "history": AliasChangeSerializer(changes, many=True).data})


def api_actor(request: Request) -> str:
    """The history's actor for a write through this API (README#alias-history)."""
    return f"api:{getattr(request, 'consumer', None) or 'anonymous'}"


def current_aliases() -> Snapshot:
    """The alias table this process serves, caught up with the database when it answers
    (another process's write is read at once); during an outage, what memory holds."""
    try:
        aliases.poll()
    except DatabaseError as exc:
        logger.warning("alias read served from memory, the database is unreachable: %s", exc)
    return aliases.snapshot

