"""Admin pages that show records written elsewhere (README#operator-console).

Breaker rows are written by the breaker board, alias changes with the change they record
and request-log rows by the request log's batch writer; the admin may show them and run its actions on them, never add, edit or
delete one by hand.
"""
from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """A ModelAdmin with a changelist and a read-only detail page, and nothing to edit."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
