from django.urls import path

from compute import views

app_name = "compute"
urlpatterns = [
    path("", views.console, name="console"),
    path("instance-types/new/", views.instance_type_edit, name="instance-type-new"),
    path("instance-types/<str:name>/", views.instance_type_edit, name="instance-type-edit"),
    path(
        "instance-types/<str:name>/delete/", views.instance_type_delete, name="instance-type-delete"
    ),
    path("workspaces/<str:workspace>/computes/new/", views.compute_edit, name="compute-new"),
    path(
        "workspaces/<str:workspace>/computes/<str:name>/", views.compute_edit, name="compute-edit"
    ),
    path(
        "workspaces/<str:workspace>/computes/<str:name>/delete/",
        views.compute_delete,
        name="compute-delete",
    ),
]
