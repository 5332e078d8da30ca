"""Client and admin keys (README#configuration): Bearer or X-API-Key, compared in constant time.

The plain /v1 views see only ClientKeyMiddleware's check; the DRF management API adds
``StaffSession`` and ``ManagementAccess`` (who may write, and the CSRF rule for sessions).
"""
import hmac
import ipaddress
from typing import Protocol

from django.conf import settings
from django.http import HttpRequest
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import SAFE_METHODS, BasePermission

from .errors import AuthenticationFailed, PermissionDenied


def presented_key(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key") or None


def _matches(key, candidates):
    # Compare against every candidate so timing does not tell which one (or none) matched.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


def is_admin_key(key: str | None) -> bool:
    return bool(key and settings.MANA_LLM_ADMIN_KEY and _matches(key, [settings.MANA_LLM_ADMIN_KEY]))


class ConsumerKeys(Protocol):
    """The issued consumer keys, as the consumers app holds them in memory (this core
    module imports no app: manallm's middleware passes them in)."""

    def identify(self, key: str) -> str | None:
        """The consumer ``key`` authenticates as; None when it is no consumer key. Raises
        AuthenticationFailed for an unknown, revoked or expired one, or a deactivated consumer."""

    def exist(self) -> bool:
        """Whether any consumer key exists (then keyless calls are refused)."""


def client_identity(request: HttpRequest, consumer_keys: ConsumerKeys | None = None) -> str | None:
    """The consumer a /v1 request is attributed to (README#consumers), or None to refuse it.

    ``admin`` for the admin key or a staff session, ``env`` for a key of MANA_LLM_API_KEY,
    a consumer's name for its key (``consumer_keys``, which may raise AuthenticationFailed),
    ``anonymous`` while the gateway needs no key at all: no MANA_LLM_API_KEY and no
    consumer key. On such an open gateway any other key (the SDKs always send one) is
    ``anonymous`` too.
    """
    key = presented_key(request)
    if key:
        if is_admin_key(key):
            return "admin"
        if _matches(key, settings.MANA_LLM_API_KEYS):
            return "env"
        if consumer_keys is not None and (consumer := consumer_keys.identify(key)) is not None:
            return consumer
    if _is_staff_session(request):
        return "admin"
    if not settings.MANA_LLM_API_KEYS and not (consumer_keys is not None and consumer_keys.exist()):
        return "anonymous"
    return None


def has_admin_access(request: HttpRequest) -> bool:
    """Management writes: the admin key, or a staff session from the admin login."""
    return is_admin_key(presented_key(request)) or _is_staff_session(request)


def _is_staff_session(request):
    # Only the browser paths carry a session; request.user is absent elsewhere.
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def is_loopback_client(request: HttpRequest) -> bool:
    """Whether the socket peer is this machine (127.0.0.0/8, ::1, or IPv4-mapped 127.x).

    Judged by REMOTE_ADDR, which Django sets from the ASGI scope's ``client`` (the TCP
    peer; daphne reads no X-Forwarded-For unless told to), never by a header a client
    writes. Behind a reverse proxy every request comes from the proxy, so with
    BEHIND_HTTPS_PROXY set no client counts as local (README#exposing-manallm).
    """
    if settings.BEHIND_HTTPS_PROXY:
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def management_access(request: HttpRequest) -> str | None:
    """'admin', 'client', 'remote' or None: who is asking for a management write.

    The one rule for every management write (README#exposing-manallm): the admin key or a
    staff session; with no admin key configured, a loopback client too ('remote' is
    anyone else then, refused with the advice to set the key).
    """
    if has_admin_access(request):
        return "admin"
    if not settings.MANA_LLM_ADMIN_KEY:
        return "admin" if is_loopback_client(request) else "remote"
    key = presented_key(request)
    if key and (_matches(key, settings.MANA_LLM_API_KEYS) or getattr(request, "consumer", None) not in
                (None, "anonymous", "admin")):
        return "client"  # a key of MANA_LLM_API_KEY, or a consumer's key (ClientKeyMiddleware said which)
    return None


def require_admin(request: HttpRequest) -> None:
    """Raise the README#endpoints error for a management write: 401 without a key, 403 with a
    client key, 403 from a remote client while no admin key is configured."""
    access = management_access(request)
    if access == "client":
        raise PermissionDenied("This call needs the admin key (MANA_LLM_ADMIN_KEY); a client key is not enough.")
    if access == "remote":
        raise PermissionDenied(
            "Management writes are accepted only from this machine (loopback) or a staff session while the "
            "gateway has no admin key: set MANA_LLM_ADMIN_KEY on the server and send "
            "'Authorization: Bearer <admin key>'.")
    if access is None:
        raise AuthenticationFailed("This call needs the admin key: send 'Authorization: Bearer <admin key>'.")


def management_policy() -> str:
    """The startup log line's words for who may write (README#exposing-manallm)."""
    if settings.MANA_LLM_ADMIN_KEY:
        return "management writes: admin key or staff session required"
    if settings.BEHIND_HTTPS_PROXY:
        return "management writes: staff sessions only (MANA_LLM_ADMIN_KEY unset, BEHIND_HTTPS_PROXY set)"
    return "management writes: loopback clients and staff sessions only (MANA_LLM_ADMIN_KEY unset)"


class StaffSession(SessionAuthentication):
    """The admin's logged-in session, for the management API.

    Keeps the user Django's session middleware found (with no authenticator DRF would
    set it to None and staff sessions could never write). A staff session is ambient
    authority a forged cross-site request would carry, so it must bring the CSRF token,
    unless the admin key is presented too (a key is never sent by the browser on its own).
    """

    def authenticate(self, request):
        user = getattr(request._request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        if _is_staff_session(request._request) and not is_admin_key(presented_key(request._request)):
            self.enforce_csrf(request)  # lets safe methods through
        return (user, None)


class AdminAccess(BasePermission):
    """Every method, reads too, needs require_admin's access: resources that are the
    operator's alone (consumers and their keys)."""

    def has_permission(self, request, view) -> bool:
        require_admin(request._request)
        return True


class ManagementAccess(BasePermission):
    """Reads are open to whoever passed ClientKeyMiddleware; writes need require_admin's
    access (the admin key, a staff session, or a loopback client while no admin key is set)."""

    def has_permission(self, request, view) -> bool:
        if request.method not in SAFE_METHODS:
            require_admin(request._request)
        return True
