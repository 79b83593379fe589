"""The core's API routes; each app routes its own (its api/urls.py), under /api/v1/ too."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from studio.api.views import MemberViewSet, TokenViewSet, WorkspaceViewSet

router = SimpleRouter()
router.register("workspaces", WorkspaceViewSet, basename="workspace")
router.register("tokens", TokenViewSet, basename="token")
router.register(r"workspaces/(?P<workspace>[^/]+)/members", MemberViewSet, basename="member")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # A readable reference, its scripts served from the sidecar package (no CDN).
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    *router.urls,
]
