"""Workspaces (IT-ops create them) and their members (owners manage them)."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle

from studio import access, services
from studio.api import WorkspaceMixin
from studio.models import ApiToken, Role, Workspace


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


class MemberSerializer(serializers.Serializer[Any]):
    """A member, or a name invited (studio.services.Member): shown alike."""

    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices)


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


class MemberViewSet(WorkspaceMixin, viewsets.GenericViewSet[Any]):
    """Members of a workspace and their roles: members read, owners change. Names an owner
    invited before their account exists are listed as members are."""

    serializer_class = MemberSerializer
    lookup_url_kwarg = "username"
    lookup_value_regex = "[^/]+"
    write_role = Role.OWNER
    it_ops_manage = True
    http_method_names = ["get", "post", "patch", "put", "delete", "head", "options"]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.get_workspace()  # who may see or change the members, before reading the body

    def get_object(self) -> services.Member:
        found = services.member_named(self.get_workspace(), self.kwargs["username"])
        if found is None:
            raise exceptions.NotFound("No such member.")
        return found

    def list(self, request: Request, **kwargs: Any) -> Response:
        page = self.paginate_queryset(services.members(self.get_workspace()))
        return self.get_paginated_response(MemberSerializer(page, many=True).data)

    def retrieve(self, request: Request, **kwargs: Any) -> Response:
        return Response(MemberSerializer(self.get_object()).data)

    @extend_schema(request=MemberSerializer, responses={201: MemberSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = MemberSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        member = services.add_member(
            self.get_workspace(),
            data.validated_data["username"],
            data.validated_data["role"],
            by=request.user,
        )
        return Response(MemberSerializer(member).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=RoleSerializer, responses=MemberSerializer)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = RoleSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        member = services.change_role(self.get_object(), data.validated_data["role"])
        return Response(MemberSerializer(member).data)

    @extend_schema(request=RoleSerializer, responses=MemberSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.update(request, *args, **kwargs)

    def destroy(self, request: Request, **kwargs: Any) -> Response:
        services.remove_member(self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


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
