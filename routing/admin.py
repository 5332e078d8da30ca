"""Aliases in the Django admin, their chain inline (README#aliases-file), and the operator
console's alias side (README#operator-console): the route preview, the history with its
diff and "restore this version", and Try it.

The chain goes through routing.validators and Alias.set_chain like the YAML and the API;
the default mark moves in Alias.save; the default alias cannot be deleted here either
(the model layer's guard, shown as a message). Every admin view that writes aliases runs
inside ``recorded("admin:<username>")``, so the history names who did it.
"""
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.http import urlencode

from manallm.errors import ModelNotFound
from manallm.readonly import ReadOnlyAdmin

from . import console, history, preview
from .models import Alias, AliasChange, ChainEntry, DefaultAliasProtected, alias_state, recorded
from .validators import AliasError, validate_alias


def admin_actor(request: HttpRequest) -> str:
    """The history's actor for a change made in the admin."""
    return f"admin:{request.user.get_username()}"


def history_items(name: str, changes) -> list[dict]:
    """The history rows the templates show: each change, its diff, and whether its version
    can be restored (it is not what the alias is now)."""
    current = alias_state(name)
    return [{"change": change, "diff": history.diff(change), "current": change.version == current,
             "restore_url": reverse("admin:routing_alias_restore", args=[change.pk])}
            for change in changes]


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
    change_form_template = "admin/routing/alias/change_form.html"
    history_shown = 50  # the newest changes on the alias page; every one is in "Alias changes"

    def get_urls(self):
        return [
            path("history/<int:change_id>/restore/", self.admin_site.admin_view(self.restore_view),
                 name="routing_alias_restore"),
            path("try/", console.try_alias, name="routing_alias_try"),  # async; checks staff itself
            *super().get_urls(),
        ]

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        with recorded(admin_actor(request)):
            return super().changeform_view(request, object_id, form_url, extra_context)

    def changelist_view(self, request, extra_context=None):
        with recorded(admin_actor(request)):  # the bulk delete action runs in here
            return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        alias = self.get_object(request, unquote(object_id))
        if alias is not None and request.method == "GET":
            extra_context = {**(extra_context or {}), **self.console_context(alias)}
        return super().change_view(request, object_id, form_url, extra_context)

    def console_context(self, alias: Alias) -> dict:
        """The route preview, the history and Try it for the alias page."""
        try:
            route = preview.route(alias.name)
        except ModelNotFound:
            route = None  # not in this process's table yet (it follows within a poll)
        changes = AliasChange.objects.filter(alias=alias.name)[: self.history_shown]
        return {"route": route, "history": history_items(alias.name, changes),
                "try_url": reverse("admin:routing_alias_try"),
                "all_changes_url": reverse("admin:routing_aliaschange_changelist") + "?" + urlencode({"alias__exact": alias.name})}

    def restore_view(self, request: HttpRequest, change_id: int) -> HttpResponse:
        """POST: put the version a recorded change left back (a ``restored`` change itself)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not (self.has_change_permission(request) and self.has_add_permission(request)):
            raise PermissionDenied
        change = get_object_or_404(AliasChange, pk=change_id)
        try:
            alias, changed = history.restore(change, admin_actor(request))
        except AliasError as exc:
            self.message_user(request, f"Not restored: {exc}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:routing_aliaschange_change", args=[change.pk]))
        at = change.at.strftime("%Y-%m-%d %H:%M:%S")
        if changed:
            self.message_user(request, f"Restored {alias.name} to its version of {at} UTC.", messages.SUCCESS)
        else:
            self.message_user(request, f"Nothing to restore: {alias.name} already is its version of {at} UTC.",
                              messages.INFO)
        return HttpResponseRedirect(reverse("admin:routing_alias_change", args=[alias.pk]))

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
        with recorded(admin_actor(request)):
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


@admin.register(AliasChange)
class AliasChangeAdmin(ReadOnlyAdmin):
    """Every recorded alias change, deleted aliases' included (README#alias-history): read
    only; a change's page shows its diff and restores its version."""

    list_display = ["at", "alias", "action", "actor"]
    list_filter = ["action", "alias"]
    search_fields = ["alias", "actor"]
    fields = ["at", "alias", "action", "actor"]
    change_form_template = "admin/routing/aliaschange/change_form.html"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        change = self.get_object(request, unquote(object_id))
        if change is not None:
            extra_context = {**(extra_context or {}), "history": history_items(change.alias, [change]),
                             "alias_now": Alias.objects.filter(name=change.alias).first()}
        return super().change_view(request, object_id, form_url, extra_context)
