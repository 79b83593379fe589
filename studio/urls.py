from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from studio import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.SignInView.as_view(), name="login"),
    path("profile/", views.profile, name="profile"),
    path("profile/tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("workspaces/<str:workspace>/jobs/", include("jobs.urls")),
    path("workspaces/<str:workspace>/data/", include("data.urls")),
    path("workspaces/<str:workspace>/environments/", include("environments.urls")),
    path("workspaces/<str:workspace>/models/", include("registry.urls")),
    path("workspaces/<str:workspace>/endpoints/", include("endpoints.urls")),
    path("workspaces/<str:workspace>/batch-endpoints/", include("endpoints.urls_batch")),
    path("workspaces/<str:workspace>/experiments/", include("tracking.urls_pages")),
    # The workspace's MLflow tracking URI is /workspaces/<workspace>/mlflow.
    path("workspaces/<str:workspace>/mlflow/", include("registry.urls_mlflow")),
    path("workspaces/<str:workspace>/mlflow/", include("tracking.urls")),
    path("workspaces/<str:workspace>/members/", views.members, name="members"),
    path(
        "workspaces/<str:workspace>/members/<str:username>/",
        views.member_change,
        name="member-change",
    ),
    path("console/workspaces/new/", views.workspace_new, name="workspace-new"),
    path("console/", include("compute.urls")),
    # Each app routes its own API (the root URLconf is the one place that knows them all).
    path("api/v1/", include("studio.api.urls")),
    path("api/v1/", include("compute.api.urls")),
    path("api/v1/", include("data.api.urls")),
    path("api/v1/", include("environments.api.urls")),
    path("api/v1/", include("registry.api.urls")),
    path("api/v1/", include("endpoints.api.urls")),
    path("api/v1/", include("jobs.api.urls")),
    path("admin/", admin.site.urls),
]

handler404 = "studio.views.not_found"
handler500 = "studio.views.server_error"
