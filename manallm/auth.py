"""Client and admin keys (SPEC §3): Bearer or X-API-Key, compared in constant time."""
import hmac

from django.conf import settings


def presented_key(request):
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


def is_admin_key(key):
    return bool(key and settings.MANA_LLM_ADMIN_KEY and _matches(key, [settings.MANA_LLM_ADMIN_KEY]))


def has_client_access(request):
    key = presented_key(request)
    if key and (_matches(key, settings.MANA_LLM_API_KEYS) or is_admin_key(key)):
        return True
    return _is_staff_session(request)


def has_admin_access(request):
    """Management writes: the admin key, or a staff session from the admin login."""
    return is_admin_key(presented_key(request)) or _is_staff_session(request)


def _is_staff_session(request):
    # Only the browser paths carry a session; request.user is absent elsewhere.
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def management_access(request):
    """'admin', 'client' or None: who is asking for a management write.

    With no keys configured at all the gateway is open, management included.
    """
    key = presented_key(request)
    if has_admin_access(request):
        return "admin"
    if not settings.MANA_LLM_ADMIN_KEY and not settings.MANA_LLM_API_KEYS:
        return "admin"
    if key and _matches(key, settings.MANA_LLM_API_KEYS):
        return "client"
    return None


def require_admin(request):
    """Raise the SPEC §5 error for a management write: 401 without a key, 403 with a client key."""
    from .errors import AuthenticationFailed, PermissionDenied

    access = management_access(request)
    if access == "client":
        raise PermissionDenied("This call needs the admin key (MANA_LLM_ADMIN_KEY); a client key is not enough.")
    if access is None:
        raise AuthenticationFailed("This call needs the admin key: send 'Authorization: Bearer <admin key>'.")
