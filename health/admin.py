"""A read-only view of the circuit breakers, with one action: reset (close) them."""
import datetime

from django.contrib import admin, messages
from django.db import DatabaseError

from .breaker import HEALTHY, UNHEALTHY
from .models import Breaker
from .board import breakers


def _when(timestamp, now):
    if timestamp is None:
        return "—"
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    delta = timestamp - now
    relative = f"in {delta:.0f} s" if delta >= 0 else f"{-delta:.0f} s ago"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({relative})"


@admin.register(Breaker)
class BreakerAdmin(admin.ModelAdmin):
    list_display = ["key", "status", "consecutive_failures", "last_error", "last_checked", "open_until"]
    list_filter = ["provider"]
    search_fields = ["key", "last_error"]
    readonly_fields = ["key", "provider", "model", "status", "consecutive_failures", "last_error", "last_checked",
                       "open_until", "updated"]
    fields = readonly_fields
    actions = ["reset_breakers"]

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

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
