"""The request log in the admin (README#request-log): read-only, filtered, searchable by request id."""
import datetime

from django.contrib import admin
from django.db.models import Q
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from manallm.readonly import ReadOnlyAdmin

from .models import RequestLogEntry


class OutcomeFilter(admin.SimpleListFilter):
    """What the operator asks first: which requests failed, fell over or were refused."""

    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request, model_admin):
        return [("failed", "failed (4xx/5xx or a stream that ended with an error)"),
                ("fell_over", "fell over (attempts before the serving entry)"),
                ("limited", "refused by a limit"), ("ok", "succeeded")]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "failed":
            return queryset.filter(Q(status__gte=400) | ~Q(error_type=""))
        if value == "fell_over":
            return queryset.filter(status__lt=400).exclude(attempts=[])
        if value == "limited":
            return queryset.exclude(limited="")
        if value == "ok":
            return queryset.filter(status__lt=400, error_type="")
        return queryset


class StatusClassFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status_class"

    def lookups(self, request, model_admin):
        return [("2", "2xx"), ("4", "4xx"), ("5", "5xx")]

    def queryset(self, request, queryset):
        if self.value() in ("2", "4", "5"):
            low = int(self.value()) * 100
            return queryset.filter(status__gte=low, status__lt=low + 100)
        return queryset


class SinceFilter(admin.SimpleListFilter):
    """Recent windows ("what fell over in the last hour"); the date hierarchy covers days."""

    title = "time"
    parameter_name = "since"
    WINDOWS = {"15m": ("last 15 minutes", 15), "1h": ("last hour", 60), "24h": ("last 24 hours", 1440),
               "7d": ("last 7 days", 10080)}

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _) in self.WINDOWS.items()]

    def queryset(self, request, queryset):
        window = self.WINDOWS.get(self.value())
        if window is None:
            return queryset
        return queryset.filter(time__gte=timezone.now() - datetime.timedelta(minutes=window[1]))


@admin.register(RequestLogEntry)
class RequestLogEntryAdmin(ReadOnlyAdmin):
    list_display = ["when", "request_id", "consumer", "requested", "target", "status", "error_type", "attempt_count",
                    "latency_ms", "first_token_ms"]
    list_filter = [SinceFilter, OutcomeFilter, StatusClassFilter, "consumer", "requested", "target", "error_type"]
    search_fields = ["=request_id"]
    search_help_text = "A request id, exactly as in X-Request-ID."
    date_hierarchy = "time"
    list_per_page = 100
    show_full_result_count = False  # no COUNT(*) over a large log on every page
    fields = ["time", "request_id", "consumer", "kind", "streaming", "requested", "target", "attempts_table",
              "status", "error_type", "latency_ms", "first_token_ms", "prompt_tokens", "completion_tokens",
              "cache", "limited"]
    readonly_fields = fields

    @admin.display(description="time (UTC)", ordering="time")
    def when(self, obj):
        return f"{obj.time:%Y-%m-%d %H:%M:%S}"

    @admin.display(description="attempts")
    def attempt_count(self, obj):
        return len(obj.attempts) or ""

    @admin.display(description="attempts (entries passed over, in order)")
    def attempts_table(self, obj):
        if not obj.attempts:
            return "none: the first entry served" if obj.status < 400 else "none"
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                                ((i, a.get("model", ""), a.get("reason", "")) for i, a in
                                 enumerate(obj.attempts, 1)))
        return format_html('<table class="request-attempts"><thead><tr><th>#</th><th>entry</th><th>reason</th>'
                           "</tr></thead><tbody>{}</tbody></table>", rows)
