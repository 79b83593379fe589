from django.urls import path

from endpoints import router

# Under /api/v1/endpoint/: the inference router, as Azure's Kubernetes router serves it.
urlpatterns = [path("<str:name>/score", router.score, name="endpoint-score")]
