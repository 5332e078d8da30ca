"""The circuit breakers in the admin: a read-only list with one action, reset (close)
them, and the health dashboard (README#health-dashboard): every configured provider and
its deployments with breaker state in colour, refreshing itself from a small JSON read of
the same body as GET /v1/health, with a reset per provider and per deployment."""
import datetime

from django.contrib import admin, messages
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse

from manallm.readonly import ReadOnlyAdmin

from .breaker import HEALTHY, UNHEALTHY
from .models import Breaker
from .board import breakers
from .views import health_body

# Seconds between the dashboard's refreshes.
DASHBOARD_REFRESH_SECONDS = 3


def _when(timestamp, now):
    if timestamp is None:
        return "—"
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    delta = timestamp - now
    relative = f"in {delta:.0f} s" if delta >= 0 else f"{-delta:.0f} s ago"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({relative})"


@admin.register(Breaker)
class BreakerAdmin(ReadOnlyAdmin):
    list_display = ["key", "status", "consecutive_failures", "last_error", "last_checked", "open_until"]
    list_filter = ["provider"]
    search_fields = ["key", "last_error"]
    readonly_fields = ["key", "provider", "model", "status", "consecutive_failures", "last_error", "last_checked",
                       "open_until", "updated"]
    fields = readonly_fields
    actions = ["reset_breakers"]
    change_list_template = "admin/health/breaker/change_list.html"

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("dashboard/", view(self.dashboard_view), name="health_dashboard"),
            path("dashboard/state.json", view(self.dashboard_state), name="health_dashboard_state"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """The page; its script (health/static/health/dashboard.js) fills and refreshes the table."""
        context = {
            **self.admin_site.each_context(request),
            "title": "Health dashboard",
            "opts": self.model._meta,
            "state_url": reverse("admin:health_dashboard_state"),
            "reset_url": reverse("health-reset", args=["__provider__"]),
            "refresh_seconds": DASHBOARD_REFRESH_SECONDS,
        }
        return TemplateResponse(request, "admin/health/dashboard.html", context)

    def dashboard_state(self, request: HttpRequest) -> JsonResponse:
        """GET /v1/health's body plus this server's clock (seconds until half-open are
        counted on it, not on the browser's). Behind the admin login: /v1/health itself
        needs a client key once MANA_LLM_API_KEY is set, which a browser does not send."""
        return JsonResponse({**health_body(), "now_unix": breakers.clock()})

    @admin.display(description="status")
    def status(self, obj):
        status = obj.state().status(breakers.clock())
        return {HEALTHY: "healthy (closed)", UNHEALTHY: "unhealthy (open)"}.get(status, "half-open")

    @admin.display(description="last check", ordering="last_check")
    def last_checked(self, obj):
        return _when(obj.last_check, breakers.clock())

    @admin.display(description="unhealthy until", ordering="unhealthy_until")
    def open_until(self, obj):
        return _when(obj.unhealthy_until, breakers.clock())

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj):
        return _when(obj.updated_at or None, breakers.clock())

    @admin.action(description="Reset (close) selected breakers")
    def reset_breakers(self, request, queryset):
        keys = list(queryset.values_list("key", flat=True))
        try:
            breakers.reset_keys(keys)
        except DatabaseError as exc:  # committed first, so nothing changed anywhere
            self.message_user(request, f"Nothing was reset: the database could not commit it ({exc}).",
                              messages.ERROR)
            return
        self.message_user(request, f"Closed {len(keys)} breaker(s): {', '.join(keys)}.", messages.SUCCESS)
