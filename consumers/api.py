"""The consumer management API (README#consumers): ``/v1/consumers``, ``/v1/consumers/<name>``,
``/v1/consumers/<name>/keys`` and ``/v1/consumers/<name>/keys/<prefix>``.

DRF as DRF, as routing.api: a ViewSet on a router, ConsumerSerializer (the one validator),
manallm.auth for access (the admin key or a staff session, reads included: keys and
limits are the operator's alone), manallm.errors.drf_exception_handler for the envelope
(a database that cannot commit is a 503 and nothing changes). Every committed write moves
the consumers' revision (consumers.signals), so every process enforces it within a second.
"""
import re

from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from manallm.auth import AdminAccess, StaffSession
from manallm.errors import NotFound
from manallm.jsonbody import JSONBodyParser

from . import keys
from .models import Consumer, ConsumerKey
from .serializers import ConsumerSerializer, KeyRequestSerializer, iso
from .validators import NAME

PREFIX = re.compile(r"[A-Za-z0-9_-]{%d}" % keys.PREFIX_CHARS)


class ConsumerViewSet(viewsets.ViewSet):
    authentication_classes = [StaffSession]
    permission_classes = [AdminAccess]
    parser_classes = [JSONBodyParser]
    lookup_field = "name"
    lookup_value_regex = r"[^/]+"  # any name reaches the lookup and its 404

    def consumer_or_404(self, name: str) -> Consumer:
        # A name no consumer can have is not looked up (PostgreSQL refuses a NUL in a query).
        consumer = Consumer.objects.prefetch_related("keys").filter(name=name).first() if NAME.fullmatch(name) else None
        if consumer is None:
            raise NotFound(f"Unknown consumer {name[:80]!r}.", param="name", code="consumer_not_found")
        return consumer

    def list(self, request: Request) -> Response:
        return Response({"consumers": ConsumerSerializer(Consumer.objects.prefetch_related("keys"), many=True).data})

    def create(self, request: Request) -> Response:
        serializer = ConsumerSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        serializer.save()
        return Response(serializer.data, status=status.HTTP_201_CREATED)

    def retrieve(self, request: Request, name: str) -> Response:
        return Response(ConsumerSerializer(self.consumer_or_404(name)).data)

    def partial_update(self, request: Request, name: str) -> Response:
        serializer = ConsumerSerializer(self.consumer_or_404(name), data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        serializer.save()
        return Response(serializer.data)

    def destroy(self, request: Request, name: str) -> Response:
        self.consumer_or_404(name).delete()  # its keys go with it; its usage rows stay (by name)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"], url_path="keys")
    def issue_key(self, request: Request, name: str) -> Response:
        """A new key, shown in this answer only."""
        consumer = self.consumer_or_404(name)
        serializer = KeyRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        row, key = keys.issue(consumer, serializer.validated_data["expires_at"])
        return Response({"key": key, "prefix": row.prefix, "created": iso(row.created),
                         "expires_at": iso(row.expires_at)}, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["delete"], url_path=r"keys/(?P<prefix>[^/]+)")
    def revoke_key(self, request: Request, name: str, prefix: str) -> Response:
        """Revoke (not delete) the key with this prefix: it stays listed, refused everywhere."""
        consumer = self.consumer_or_404(name)
        row = ConsumerKey.objects.filter(consumer=consumer, prefix=prefix).first() if PREFIX.fullmatch(prefix) else None
        if row is None:
            raise NotFound(f"Consumer {name!r} has no key {prefix[:20]!r}.", param="prefix", code="key_not_found")
        keys.revoke(row)
        return Response(status=status.HTTP_204_NO_CONTENT)
