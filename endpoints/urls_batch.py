from django.urls import path

from endpoints import batch_views

app_name = "batch"
urlpatterns = [
    path("", batch_views.batch_list, name="list"),
    path("<str:name>/", batch_views.batch_detail, name="detail"),
    path("<str:name>/deployments/", batch_views.batch_deployment_new, name="deployment-new"),
    path("<str:name>/default/", batch_views.batch_default, name="default"),
    path("<str:name>/invoke/", batch_views.batch_invoke, name="invoke"),
    path(
        "<str:name>/<str:deployment>/delete/",
        batch_views.batch_deployment_delete,
        name="deployment-delete",
    ),
]
