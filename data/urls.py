from django.urls import path

from data import views

app_name = "data"
urlpatterns = [
    path("", views.data_list, name="list"),
    path("new/", views.data_new, name="new"),
    path("datastores/", views.datastores, name="datastores"),
    path("datastores/<str:name>/delete/", views.datastore_delete, name="datastore-delete"),
    path("<str:name>/", views.data_detail, name="detail"),
]
