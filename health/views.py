"""Health reads (README#endpoints): /v1/health, /health (liveness) and /ready (readiness);
the reset is DRF, in health.api.

Plain async views like the OpenAI endpoints (manallm.views.openai_view), read from the
in-memory breaker board (no database query per request); the state poller keeps it
within STATE_POLL_INTERVAL of what other processes wrote.

Overall status: ``healthy`` when every configured provider's breaker is closed,
``unhealthy`` when every one is open, ``degraded`` otherwise — a half-open breaker is
neither closed nor open, so it makes the gateway ``degraded``.
"""
from collections.abc import Iterable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from manallm import background
from manallm.errors import json_response
from manallm.views import openai_view
from providers import registry
from providers.base import Provider

from .board import breakers
from .breaker import HEALTHY, UNHEALTHY


def overall_status(statuses: Iterable[str]) -> str:
    statuses = list(statuses)
    if all(status == HEALTHY for status in statuses):
        return "healthy"
    if all(status == UNHEALTHY for status in statuses):
        return "unhealthy"
    return "degraded"


def provider_entry(name: str, provider: Provider, snapshot: dict | None = None) -> dict:
    """A provider's breaker and its deployments', with its requests in flight and its cap
    (``max_concurrent``, None when unlimited)."""
    entry = breakers.entry(name, snapshot)
    fields = {key: value for key, value in entry.items() if key != "models"}
    return {**fields, "in_flight": getattr(provider, "in_flight", 0),
            "max_concurrent": getattr(provider, "max_concurrent", None), "models": entry.get("models", {})}


def health_body() -> dict:
    """GET /v1/health's body (also read by the admin's health dashboard)."""
    snapshot = breakers.snapshot()
    providers = {name: provider_entry(name, p, snapshot) for name, p in registry.configured().items()}
    return {"status": overall_status(e["status"] for e in providers.values()), "providers": providers}


@openai_view("GET", "HEAD")
async def health_detail(request: HttpRequest) -> HttpResponse:
    return json_response(health_body())


@openai_view("GET", "HEAD")
async def liveness(request: HttpRequest) -> HttpResponse:
    snapshot = breakers.snapshot()
    statuses = {name: breakers.entry(name, snapshot)["status"] for name in registry.configured()}
    return json_response({
        "status": overall_status(statuses.values()),
        "service": "manallm",
        "version": settings.VERSION,
        "providers": statuses,
    })


@openai_view("GET", "HEAD")
async def readiness(request: HttpRequest) -> HttpResponse:
    """200 once this process holds its state in memory (it can serve without the
    database), 503 before: for an orchestrator's readiness check. Reads no database."""
    if background.is_ready():
        return json_response({"status": "ready"})
    return json_response({"status": "starting", "waiting_for": background.waiting_for()}, status=503)
