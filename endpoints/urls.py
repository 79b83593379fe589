from django.urls import path

from endpoints import views

app_name = "endpoints"
urlpatterns = [
    path("", views.endpoint_list, name="list"),
    path("<str:name>/", views.endpoint_detail, name="detail"),
    path("<str:name>/deployments/", views.deployment_new, name="deployment-new"),
    path("<str:name>/traffic/", views.traffic, name="traffic"),
    path("<str:name>/keys/", views.keys, name="keys"),
    path("<str:name>/console/", views.console, name="console"),
    path(
        "<str:name>/<str:deployment>/traffic/", views.deployment_traffic, name="deployment-traffic"
    ),
    path("<str:name>/<str:deployment>/", views.deployment_detail, name="deployment"),
]
