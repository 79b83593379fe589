from django.urls import path

from jobs import views

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.submit, name="submit"),
    path("new/local-inputs/", views.local_inputs, name="local-inputs"),
    path("compare/", views.compare, name="compare"),
    path("<str:name>/", views.job_detail, name="detail"),
    path("<str:name>/row/", views.job_row, name="row"),
    path("<str:name>/cancel/", views.cancel, name="cancel"),
    path("<str:name>/log.txt", views.log_text, name="log"),
    path("<str:name>/metrics.json", views.metrics, name="metrics"),
    path("<str:name>/outputs/<str:output>/", views.download, name="download"),
    path("<str:name>/outputs/<str:output>/<path:path>", views.download_file, name="file"),
]
