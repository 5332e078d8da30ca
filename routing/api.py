"""The alias management API (SPEC §5): GET /v1/aliases, GET/PUT/DELETE /v1/aliases/<name>.

Reads answer from the database (the source of truth for writers); writes need the admin
key or a staff session and go through the same validator as the YAML import.
"""
from django.db import transaction
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from manallm import auth
from manallm.errors import InvalidRequest, ModelNotFound

from .models import Alias
from .validators import AliasError, validate_alias


def alias_data(alias):
    return {"name": alias.name, "description": alias.description,
            "chain": [entry.target for entry in alias.entries.all()]}


def get_alias(name):
    try:
        return Alias.objects.prefetch_related("entries").get(name=name)
    except Alias.DoesNotExist:
        raise ModelNotFound(f"Unknown alias {name!r}.", param="name") from None


def check_write(request):
    auth.require_admin(request._request)
    if not auth.is_admin_key(auth.presented_key(request._request)) and auth.has_admin_access(request._request):
        # A browser session, not a key: it must carry the CSRF token.
        SessionAuthentication().enforce_csrf(request)


def invalid(exc: AliasError):
    return InvalidRequest(str(exc), param=exc.field, code="invalid_alias")


class DjangoSessionUser(BaseAuthentication):
    """Keep the user Django's session middleware found: with no authenticator DRF would
    set request._request.user to None and staff sessions could never write. No CSRF
    check here: check_write enforces it for session writes only."""

    def authenticate(self, request):
        user = getattr(request._request, "user", None)
        return (user, None) if user is not None and user.is_authenticated else None


class AnyTypeJSONParser(JSONParser):
    """The body is JSON whatever its Content-Type says, as on the OpenAI endpoints
    (``curl -d`` sends form-urlencoded by default)."""

    media_type = "*/*"


class AliasListView(APIView):
    authentication_classes = [DjangoSessionUser]

    def get(self, request):
        aliases = Alias.objects.prefetch_related("entries")
        default = next((alias.name for alias in aliases if alias.is_default), None)
        return Response({"default": default, "aliases": [alias_data(alias) for alias in aliases]})


class AliasDetailView(APIView):
    authentication_classes = [DjangoSessionUser]
    parser_classes = [AnyTypeJSONParser]

    def get(self, request, name):
        return Response(alias_data(get_alias(name)))

    def put(self, request, name):
        check_write(request)
        body = request.data
        if not isinstance(body, dict):
            raise InvalidRequest("The body must be a JSON object with 'description' and 'chain'.", param="body")
        make_default = body.get("default", False)
        if not isinstance(make_default, bool):
            raise InvalidRequest("'default' must be true or false.", param="default")
        try:
            spec = validate_alias(name, {key: value for key, value in body.items() if key != "default"})
        except AliasError as exc:
            raise invalid(exc) from exc
        with transaction.atomic():
            alias, created = Alias.objects.update_or_create(name=spec.name, defaults={"description": spec.description})
            alias.set_chain(spec.chain)
            if make_default and not alias.is_default:
                alias.is_default = True
                alias.save()
        return Response(alias_data(get_alias(name)), status=201 if created else 200)

    def delete(self, request, name):
        check_write(request)
        alias = get_alias(name)
        if alias.is_default:
            raise InvalidRequest(f"{name!r} is the default alias; make another alias the default first.",
                                 param="name", code="default_alias")
        alias.delete()
        return Response(status=204)
