"""Aliases in the Django admin, their chain inline (README#aliases-file).

The chain goes through routing.validators and Alias.set_chain like the YAML and the API;
the default mark moves in Alias.save; the default alias cannot be deleted here either
(the model layer's guard, shown as a message).
"""
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from .models import Alias, ChainEntry, DefaultAliasProtected
from .validators import AliasError, validate_alias


class ChainEntryInline(admin.TabularInline):
    model = ChainEntry
    fields = ["position", "target", "enabled", "first_token_timeout", "prefill"]
    extra = 1
    ordering = ["position", "id"]


class ChainFormSet(forms.BaseInlineFormSet):
    """The chain as a whole (with the description) goes through the same validator as the YAML and the API, and
    is written by the same model method (``Alias.set_chain``), whole and in order."""

    chain = ()

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        rows = [form.cleaned_data for form in self.forms
                if form.cleaned_data and not form.cleaned_data.get("DELETE")]
        rows.sort(key=lambda row: row.get("position") or 0)
        chain = [{"target": row["target"], "enabled": row.get("enabled", True),
                  "first_token_timeout": row.get("first_token_timeout"), "prefill": row.get("prefill", False)}
                 for row in rows]
        name = self.instance.name or "mana/new"
        try:
            self.chain = validate_alias(name, {"description": self.instance.description, "chain": chain,
                                               "cache_ttl": self.instance.cache_ttl}).chain
        except AliasError as exc:
            raise ValidationError(str(exc)) from exc


ChainEntryInline.formset = ChainFormSet


class AliasForm(forms.ModelForm):
    """``cache_ttl`` left out of a post means 0 (no cache), as in the YAML and the API."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["cache_ttl"].required = False

    def clean_cache_ttl(self) -> int:
        return self.cleaned_data.get("cache_ttl") or 0


@admin.register(Alias)
class AliasAdmin(admin.ModelAdmin):
    form = AliasForm
    list_display = ["name", "is_default", "chain_display", "description"]
    list_filter = ["is_default"]
    search_fields = ["name", "description", "entries__target"]
    inlines = [ChainEntryInline]
    actions = ["delete_selected"]
    fields = ["name", "description", "is_default", "stream_continuation", "cache_ttl"]

    @admin.display(description="chain")
    def chain_display(self, obj):
        return " → ".join(entry.target + ("" if entry.enabled else " (disabled)") for entry in obj.entries.all())

    def save_related(self, request: HttpRequest, form, formsets, change: bool) -> None:
        form.save_m2m()
        for formset in formsets:
            if isinstance(formset, ChainFormSet):
                formset.save(commit=False)  # only records what changed, for the history message
                form.instance.set_chain(formset.chain)
            else:
                self.save_formset(request, form, formset, change=change)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("entries")

    def get_search_results(self, request, queryset, search_term):
        queryset, _ = super().get_search_results(request, queryset, search_term)
        return queryset.distinct(), False

    def delete_view(self, request: HttpRequest, object_id: str, extra_context=None) -> HttpResponse:
        """Refuse the default alias before the confirmation page, back on its change page."""
        try:
            Alias.objects.filter(pk=object_id).check_deletable()
        except DefaultAliasProtected as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(reverse("admin:routing_alias_change", args=[object_id]))
        return super().delete_view(request, object_id, extra_context)

    @admin.action(permissions=["delete"], description=django_delete_selected.short_description)
    def delete_selected(self, request: HttpRequest, queryset) -> HttpResponse | None:
        """Django's bulk delete, unless the selection holds the default alias (this name
        overrides the site-wide action)."""
        try:
            queryset.check_deletable()
        except DefaultAliasProtected as exc:
            self.message_user(request, f"Nothing deleted: {exc}", messages.ERROR)
            return None
        return django_delete_selected(self, request, queryset)
