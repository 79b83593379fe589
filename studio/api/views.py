"""Workspaces (IT-ops create them) and their members (owners manage them)."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle

from studio import access, services
from studio.api import WorkspaceMixin
from studio.models import ApiToken, Membership, Role, Workspace


class WorkspaceSerializer(serializers.ModelSerializer[Workspace]):
    default_compute = serializers.CharField(
        read_only=True, allow_null=True, help_text="The compute target jobs get by default."
    )

    class Meta:
        model = Workspace
        fields = ("name", "description", "default_compute", "created_at")


class NewWorkspaceSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    description = serializers.CharField(required=False, allow_blank=True, default="")
    owner = serializers.CharField(
        required=False, help_text="Username of the first owner (default: you)."
    )


class MemberSerializer(serializers.ModelSerializer[Membership]):
    username = serializers.CharField(source="user.username")
    role = serializers.ChoiceField(choices=Role.choices)

    class Meta:
        model = Membership
        fields = ("username", "role")


class RoleSerializer(serializers.Serializer[Any]):
    role = serializers.ChoiceField(choices=Role.choices)


class WorkspaceViewSet(
    mixins.CreateModelMixin,
    viewsets.ReadOnlyModelViewSet[Workspace],
):
    serializer_class = WorkspaceSerializer
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def get_queryset(self) -> QuerySet[Workspace]:
        return access.with_default_compute(access.visible_workspaces(self.request.user))

    @extend_schema(request=NewWorkspaceSerializer, responses={201: WorkspaceSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create a workspace with its local compute target (IT-ops)."""
        if not access.is_it_ops(request.user):
            raise PermissionDenied("Only IT-ops may create workspaces.")
        data = NewWorkspaceSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        owner = data.validated_data.get("owner")
        workspace = services.create_workspace(
            data.validated_data["name"],
            data.validated_data["description"],
            owner=services.user_named(owner, "owner") if owner else request.user,
        )
        workspace = access.with_default_compute(Workspace.objects.filter(pk=workspace.pk)).get()
        return Response(WorkspaceSerializer(workspace).data, status=status.HTTP_201_CREATED)


class MemberViewSet(WorkspaceMixin, viewsets.ModelViewSet[Membership]):
    """Members of a workspace and their roles: members read, owners change."""

    serializer_class = MemberSerializer
    lookup_field = "user__username"
    lookup_url_kwarg = "username"
    lookup_value_regex = "[^/]+"
    write_role = Role.OWNER
    it_ops_manage = True
    http_method_names = ["get", "post", "patch", "put", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Membership]:
        return (
            Membership.objects.filter(workspace=self.get_workspace())
            .select_related("user")
            .order_by("user__username")
        )

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.get_workspace()  # who may see or change the members, before reading the body

    @extend_schema(request=MemberSerializer, responses={201: MemberSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = MemberSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        member = services.add_member(
            self.get_workspace(),
            data.validated_data["user"]["username"],
            data.validated_data["role"],
        )
        return Response(MemberSerializer(member).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=RoleSerializer, responses=MemberSerializer)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = RoleSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        member = services.change_role(self.get_object(), data.validated_data["role"])
        return Response(MemberSerializer(member).data)

    def perform_destroy(self, instance: Membership) -> None:
        services.remove_member(instance)


class TokenSerializer(serializers.ModelSerializer[ApiToken]):
    expired = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields: tuple[str, ...] = (
            "id",
            "name",
            "hint",
            "created_at",
            "last_used_at",
            "expires_at",
            "expired",
        )


class NewTokenSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100)
    expires_in_days = serializers.IntegerField(
        required=False, allow_null=True, help_text="Empty or null: never."
    )


class IssuedTokenSerializer(TokenSerializer):
    key = serializers.CharField(read_only=True, help_text="Shown this once; never stored.")

    class Meta(TokenSerializer.Meta):
        fields = (*TokenSerializer.Meta.fields, "key")


class TokenViewSet(
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet[ApiToken],
):
    """Your own API tokens: list, create (the key is in the answer, once), revoke."""

    serializer_class = TokenSerializer
    queryset = ApiToken.objects.none()  # for the schema; get_queryset is the user's own
    throttle_scope = "tokens"

    def get_throttles(self) -> list[Any]:
        return [ScopedRateThrottle()] if self.action == "create" else []

    def get_queryset(self) -> QuerySet[ApiToken]:
        return services.tokens_of(self.request.user)

    @extend_schema(request=NewTokenSerializer, responses={201: IssuedTokenSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = NewTokenSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token, key = services.issue_token(
            request.user, data.validated_data["name"], data.validated_data.get("expires_in_days")
        )
        token.key = key  # type: ignore[attr-defined]
        return Response(IssuedTokenSerializer(token).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: ApiToken) -> None:
        services.revoke_token(instance)
