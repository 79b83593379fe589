from django.urls import path

from compute import cluster_views, views

app_name = "compute"
urlpatterns = [
    path("", views.console, name="console"),
    path("instance-types/new/", views.instance_type_edit, name="instance-type-new"),
    path("instance-types/<str:name>/", views.instance_type_edit, name="instance-type-edit"),
    path(
        "instance-types/<str:name>/delete/", views.instance_type_delete, name="instance-type-delete"
    ),
    path("clusters/new/", cluster_views.cluster_new, name="cluster-new"),
    path("clusters/<str:name>/", cluster_views.cluster_detail, name="cluster"),
    path("clusters/<str:name>/install/", cluster_views.cluster_install, name="cluster-install"),
    path("clusters/<str:name>/nodes/", cluster_views.cluster_nodes, name="cluster-nodes"),
    path(
        "clusters/<str:name>/manifests/", cluster_views.cluster_manifests, name="cluster-manifests"
    ),
    path(
        "clusters/<str:name>/uninstall/", cluster_views.cluster_uninstall, name="cluster-uninstall"
    ),
    path("clusters/<str:name>/delete/", cluster_views.cluster_delete, name="cluster-delete"),
    path(
        "clusters/<str:name>/instance-types/",
        cluster_views.cluster_instance_types,
        name="cluster-instance-types",
    ),
    path(
        "clusters/<str:name>/instance-types/new/",
        cluster_views.cluster_instance_type_edit,
        name="cluster-instance-type-new",
    ),
    path(
        "clusters/<str:name>/instance-types/<str:instance_type>/edit/",
        cluster_views.cluster_instance_type_edit,
        name="cluster-instance-type-edit",
    ),
    path(
        "clusters/<str:name>/instance-types/<str:instance_type>/delete/",
        cluster_views.cluster_instance_type_delete,
        name="cluster-instance-type-delete",
    ),
    path("workspaces/<str:workspace>/attach/", cluster_views.attach, name="attach"),
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
