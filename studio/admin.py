"""Django admin for what has no console page of its own yet: workspaces and members."""

from django.contrib import admin

from studio.models import ApiToken, Membership, Workspace


class MembershipInline(admin.TabularInline[Membership, Workspace]):
    model = Membership
    extra = 1
    autocomplete_fields = ("user",)


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin[Workspace]):
    list_display = ("name", "created_at")
    search_fields = ("name",)
    inlines = (MembershipInline,)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
    list_display = ("user", "name", "hint", "created_at", "last_used_at")
    readonly_fields = ("hint", "created_at", "last_used_at")
    fields = ("user", "name", "hint", "created_at", "last_used_at")

    def has_add_permission(self, request: object) -> bool:
        return False  # tokens are made with `manage.py createtoken`, which shows the key once
