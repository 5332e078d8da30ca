from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from .models import Alias, ChainEntry
from .validators import AliasError, validate_alias


class ChainEntryInline(admin.TabularInline):
    model = ChainEntry
    fields = ["position", "target", "enabled", "first_token_timeout"]
    extra = 1
    ordering = ["position", "id"]


class ChainFormSet(forms.BaseInlineFormSet):
    """The chain as a whole goes through the same validator as the YAML and the API."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        rows = [form.cleaned_data for form in self.forms
                if form.cleaned_data and not form.cleaned_data.get("DELETE")]
        rows.sort(key=lambda row: row.get("position") or 0)
        chain = [{"target": row["target"], "enabled": row.get("enabled", True),
                  "first_token_timeout": row.get("first_token_timeout")} for row in rows]
        name = self.instance.name or "mana/new"
        try:
            validate_alias(name, {"description": "", "chain": chain})
        except AliasError as exc:
            raise ValidationError(str(exc)) from exc


ChainEntryInline.formset = ChainFormSet


@admin.register(Alias)
class AliasAdmin(admin.ModelAdmin):
    list_display = ["name", "is_default", "chain_display", "description"]
    list_filter = ["is_default"]
    search_fields = ["name", "description", "entries__target"]
    inlines = [ChainEntryInline]
    fields = ["name", "description", "is_default"]

    @admin.display(description="chain")
    def chain_display(self, obj):
        return " → ".join(entry.target + ("" if entry.enabled else " (disabled)") for entry in obj.entries.all())

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("entries")

    def get_search_results(self, request, queryset, search_term):
        queryset, _ = super().get_search_results(request, queryset, search_term)
        return queryset.distinct(), False
