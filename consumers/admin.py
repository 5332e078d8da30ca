"""Consumers in the Django admin (README#consumers): their keys inline, scope, limits, usage.

The form checks every field with consumers.validators, the API's one validator. A key is
issued from the consumer's page ("Issue a new key", with an optional expiry) or the list's
action, and shown once, in the confirmation message; an existing key can be given an
expiry or revoked (kept and listed, refused by every process within a second), never read.
"""
from datetime import UTC, datetime

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from . import keys
from .models import Consumer, ConsumerKey
from .validators import FIELDS, ConsumerError, validate_consumer


class ConsumerKeyForm(forms.ModelForm):
    revoke = forms.BooleanField(required=False, help_text="Refused by every process within a second.")

    class Meta:
        model = ConsumerKey
        fields = ["expires_at"]

    def save(self, commit: bool = True) -> ConsumerKey:
        if self.cleaned_data.get("revoke") and self.instance.revoked_at is None:
            self.instance.revoked_at = datetime.now(UTC)
        return super().save(commit)


class ConsumerKeyInline(admin.TabularInline):
    model = ConsumerKey
    form = ConsumerKeyForm
    fields = ["prefix_display", "created", "expires_at", "last_used", "revoked_at", "revoke"]
    readonly_fields = ["prefix_display", "created", "last_used", "revoked_at"]
    extra = 0
    can_delete = False  # revoke instead: a revoked key stays listed

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # keys are issued by the gateway ("Issue a new key" above), never typed in

    @admin.display(description="key")
    def prefix_display(self, key: ConsumerKey) -> str:
        return str(key)


class ConsumerForm(forms.ModelForm):
    allowed_models = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text="One pattern per line: an exact model name (mana/fast-text) or a prefix ending in * "
                  "(mana/*, ollama/*). Empty: every model.")
    issue_key = forms.BooleanField(required=False, label="Issue a new key",
                                   help_text="Shown once, in the confirmation message after saving.")
    new_key_expires_at = forms.DateTimeField(required=False, label="New key expires at",
                                             help_text="Optional (UTC), e.g. 2030-01-31 12:00.")

    class Meta:
        model = Consumer
        fields = list(FIELDS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["allowed_models"] = "\n".join(self.instance.allowed_models or [])

    def clean_allowed_models(self) -> list[str]:
        return [line.strip() for line in self.cleaned_data["allowed_models"].splitlines() if line.strip()]

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        values = {field: data.get(field) for field in FIELDS if field in data}
        try:
            data.update(validate_consumer(values, name=data.get("name") or self.instance.name))
        except ConsumerError as error:
            self.add_error(error.field if error.field in self.fields else None, error.reason)
        return data


@admin.register(Consumer)
class ConsumerAdmin(admin.ModelAdmin):
    form = ConsumerForm
    list_display = ["name", "active", "scope_display", "limits_display", "keys_display", "description"]
    list_filter = ["active"]
    search_fields = ["name", "description", "keys__prefix"]
    inlines = [ConsumerKeyInline]
    actions = ["issue_keys"]
    readonly_fields = ["usage_summary"]
    fieldsets = [
        (None, {"fields": ["name", "description", "active"]}),
        ("Scope", {"fields": ["allowed_models"]}),
        ("Limits", {"fields": ["rpm", "tpm", "max_concurrent", "token_budget", "budget_period"],
                    "description": "Empty: no limit. A token budget needs its period (UTC calendar day or month)."}),
        ("Keys", {"fields": ["issue_key", "new_key_expires_at"]}),
        ("Usage", {"fields": ["usage_summary"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        # Usage is kept by name: a consumer is not renamed (create a new one instead).
        return [*self.readonly_fields, "name"] if obj else self.readonly_fields

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("keys")

    def get_search_results(self, request, queryset, search_term):
        queryset, _ = super().get_search_results(request, queryset, search_term)
        return queryset.distinct(), False

    @admin.display(description="scope")
    def scope_display(self, obj: Consumer) -> str:
        return ", ".join(obj.allowed_models) or "every model"

    @admin.display(description="limits")
    def limits_display(self, obj: Consumer) -> str:
        limits = [f"{field} {getattr(obj, field)}" for field in ("rpm", "tpm", "max_concurrent")
                  if getattr(obj, field) is not None]
        if obj.token_budget is not None:
            limits.append(f"{obj.token_budget} tokens/{obj.budget_period}")
        return ", ".join(limits) or "none"

    @admin.display(description="keys in use")
    def keys_display(self, obj: Consumer) -> int:
        now = datetime.now(UTC)
        return sum(1 for key in obj.keys.all() if key.revoked_at is None and (key.expires_at is None
                                                                              or key.expires_at > now))

    @admin.display(description="usage")
    def usage_summary(self, obj: Consumer | None) -> str:
        if obj is None or obj.pk is None:
            return "—"
        return admin_usage.usage_summary(obj)

    def save_related(self, request: HttpRequest, form, formsets, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if form.cleaned_data.get("issue_key"):
            self._issue(request, form.instance, form.cleaned_data.get("new_key_expires_at"))

    @admin.action(permissions=["change"], description="Issue a new key (shown once)")
    def issue_keys(self, request: HttpRequest, queryset) -> None:
        for consumer in queryset:
            self._issue(request, consumer, None)

    def _issue(self, request: HttpRequest, consumer: Consumer, expires_at: datetime | None) -> None:
        row, key = keys.issue(consumer, expires_at)
        until = f", expires {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else ""
        self.message_user(request, f"New key for {consumer.name}{until}: {key} — copy it now, it is shown only "
                                   f"this once (listed as {row}).", messages.SUCCESS)


from . import admin_usage  # noqa: E402,F401  (the usage summary; at the bottom, as it may import this module)
