"""Health endpoints (SPEC §5): /v1/health, /v1/health/<provider>/reset, /health.

Read from the in-memory breaker board (no database query per request); the runtime
poller keeps it within STATE_POLL_INTERVAL of what other processes wrote.

Overall status: ``healthy`` when every configured provider's breaker is closed,
``unhealthy`` when every one is open, ``degraded`` otherwise — a half-open breaker is
neither closed nor open, so it makes the gateway ``degraded``.
"""
import logging

from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from manallm.auth import require_admin
from manallm.errors import APIError, MethodNotAllowed, NotFound
from providers import registry

from .breaker import HEALTHY, UNHEALTHY
from .board import breakers

logger = logging.getLogger("manallm.health")


def overall_status(statuses):
    statuses = list(statuses)
    if all(status == HEALTHY for status in statuses):
        return "healthy"
    if all(status == UNHEALTHY for status in statuses):
        return "unhealthy"
    return "degraded"


def provider_entry(name, provider, snapshot=None):
    entry = (snapshot or {}).get(name) or breakers.entry(name)
    fields = {key: value for key, value in entry.items() if key != "models"}
    return {**fields, "in_flight": getattr(provider, "in_flight", 0), "models": entry.get("models", {})}


def _method_not_allowed(request, allowed):
    response = MethodNotAllowed(f"Method {request.method} is not allowed here; use {allowed}.").response()
    response["Allow"] = allowed
    return response


async def health_detail(request):
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request, "GET")
    snapshot = breakers.snapshot()
    providers = {name: provider_entry(name, p, snapshot) for name, p in registry.configured().items()}
    return JsonResponse({"status": overall_status(e["status"] for e in providers.values()), "providers": providers})


@csrf_exempt
async def health_reset(request, provider):
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    try:
        require_admin(request)
    except APIError as exc:
        return exc.response()
    configured = registry.configured()
    if provider not in configured:
        return NotFound(
            f"Unknown or unconfigured provider '{provider}'; configured: {', '.join(sorted(configured)) or 'none'}.",
            param="provider",
        ).response()
    breakers.reset(provider)
    await breakers.flush()
    return JsonResponse({"provider": provider, **provider_entry(provider, configured[provider])})


async def liveness(request):
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request, "GET")
    snapshot = breakers.snapshot()
    statuses = {name: (snapshot.get(name) or breakers.entry(name))["status"] for name in registry.configured()}
    return JsonResponse({
        "status": overall_status(statuses.values()),
        "service": "manallm",
        "version": settings.VERSION,
        "providers": statuses,
    })
