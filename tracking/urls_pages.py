from django.urls import path

from tracking import views

app_name = "tracking"
urlpatterns = [
    path("", views.experiment_list, name="experiments"),
    path("<int:experiment_id>/", views.experiment_detail, name="experiment"),
]
