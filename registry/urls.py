from django.urls import path

from registry import views

app_name = "registry"
urlpatterns = [
    path("", views.model_list, name="list"),
    path("new/", views.model_new, name="new"),
    path("<str:name>/", views.model_detail, name="detail"),
    path("<str:name>/<str:version>/", views.version_detail, name="version"),
    path("<str:name>/<str:version>/download/", views.version_download, name="download"),
]
