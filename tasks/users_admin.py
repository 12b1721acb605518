"""Users and roles in the admin: nobody but a superuser grants a privilege they do not hold.

The stock ``UserAdmin`` lets anyone with ``auth.change_user`` tick "Superuser status", or add any
group or permission, to anyone, themselves included; the stock ``GroupAdmin`` lets anyone with
``auth.change_group`` put any permission into a role. These replace them. For an editor who is
not a superuser:

- ``is_superuser`` is read-only;
- the groups and permissions on offer are the ones the editor could hold without gaining
  anything: a permission the editor holds, a group whose every permission the editor holds.
  Anything else is not a valid choice, so a crafted POST fails validation and changes nothing;
- a user holding a privilege the editor lacks (any superuser) may be viewed, but not changed,
  deleted or given a new password: setting their password would hand their privileges over;
  likewise a group holding a permission the editor lacks;
- e-mail addresses and account details are for those who may change users. ``view_user`` alone,
  which the task form's assignee autocomplete needs, shows a directory: usernames and names,
  searchable by those only.

The rules are checked by the server on every request (the permission methods and the form's
choices), not only by what the page shows.
"""

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as StockGroupAdmin
from django.contrib.auth.admin import UserAdmin as StockUserAdmin
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group, Permission, User
from django.db.models import Q, QuerySet
from django.http import HttpRequest

# What someone who may view users but not change them sees of each: enough to pick an assignee.
DIRECTORY_FIELDS = ("username", "first_name", "last_name")


def held_permissions(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Permission]:
    """The permissions ``user`` holds, directly or through its groups (also while inactive: a
    deactivated account gets them back when it is reactivated); every one for a superuser."""
    if user.is_superuser:
        return Permission.objects.all()
    if not user.is_authenticated:
        return Permission.objects.none()
    return Permission.objects.filter(Q(user=user) | Q(group__user=user)).distinct()


def lacks_any(editor: AbstractBaseUser, permissions: QuerySet[Permission]) -> bool:
    """Whether ``permissions`` include one that ``editor`` does not hold."""
    return permissions.exclude(pk__in=held_permissions(editor).values("pk")).exists()


def grantable_groups(editor: AbstractBaseUser) -> QuerySet[Group]:
    """The groups ``editor`` may give to someone: those holding no permission ``editor`` lacks."""
    if editor.is_superuser:
        return Group.objects.all()
    lacking = Permission.objects.exclude(pk__in=held_permissions(editor).values("pk"))
    return Group.objects.exclude(permissions__in=lacking)


def may_manage_user(editor: AbstractBaseUser, user: User) -> bool:
    """Whether ``editor`` may change ``user``: never a superuser, unless ``editor`` is one, and
    nobody holding a permission ``editor`` lacks."""
    if editor.is_superuser:
        return True
    return not user.is_superuser and not lacks_any(editor, held_permissions(user))


def may_manage_group(editor: AbstractBaseUser, group: Group) -> bool:
    """Whether ``editor`` may change ``group``: only one holding no permission ``editor`` lacks."""
    return editor.is_superuser or not lacks_any(editor, group.permissions.all())


class WithinOwnPrivileges:
    """For a model admin: objects ``may_manage`` refuses the editor are read-only to them, and
    the groups and permissions on offer are those the editor may grant."""

    may_manage: Callable[[AbstractBaseUser, Any], bool]

    def manages(self, request: HttpRequest, obj) -> bool:
        return obj is None or self.may_manage(request.user, obj)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return super().has_change_permission(request, obj) and self.manages(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and self.manages(request, obj)

    def formfield_for_manytomany(self, db_field, request: HttpRequest, **kwargs):
        if db_field.related_model is Group:
            kwargs["queryset"] = grantable_groups(request.user)
        elif db_field.related_model is Permission:
            kwargs["queryset"] = held_permissions(request.user).select_related("content_type")
        return super().formfield_for_manytomany(db_field, request, **kwargs)


admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(WithinOwnPrivileges, StockUserAdmin):
    """The stock user admin, granting only what the editor holds (see the module's docstring)."""

    may_manage = staticmethod(may_manage_user)

    def sees_accounts(self, request: HttpRequest) -> bool:
        """Whether the requester may see e-mail addresses and account details: those who may
        change users (read-only on the accounts they may not change)."""
        return super().has_change_permission(request)

    def get_readonly_fields(self, request: HttpRequest, obj: User | None = None):
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            readonly.append("is_superuser")
        return readonly

    def get_fieldsets(self, request: HttpRequest, obj: User | None = None):
        if obj is not None and not self.sees_accounts(request):
            return [(None, {"fields": DIRECTORY_FIELDS})]
        return super().get_fieldsets(request, obj)

    def get_list_display(self, request: HttpRequest):
        return (
            super().get_list_display(request) if self.sees_accounts(request) else DIRECTORY_FIELDS
        )

    def get_list_filter(self, request: HttpRequest):
        # Filtering by superuser status or group would tell a directory reader who holds what.
        return super().get_list_filter(request) if self.sees_accounts(request) else ()

    def get_search_fields(self, request: HttpRequest):
        # Also the autocomplete's search: no probing for an address one letter at a time.
        return (
            super().get_search_fields(request) if self.sees_accounts(request) else DIRECTORY_FIELDS
        )

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # The changelist accepts any lookup on the model's own fields (?email__startswith=a):
        # a directory reader may filter by the directory's fields only.
        if request is not None and not self.sees_accounts(request):
            if lookup.split("__")[0] not in DIRECTORY_FIELDS:
                return False
        return super().lookup_allowed(lookup, value, request)


@admin.register(Group)
class GroupAdmin(WithinOwnPrivileges, StockGroupAdmin):
    """The stock group admin, putting into a group only the permissions the editor holds."""

    may_manage = staticmethod(may_manage_group)
