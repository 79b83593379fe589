"""What a router inside a cluster asks of the studio (endpoints.remote): an endpoint's
routing table, and where to leave its per-second counts. Authenticated by the cluster's
router token (`compute.inference.router_token`: `Bearer krt_...`), which opens the
endpoints on that cluster only, never a person's."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, views
from rest_framework.request import Request
from rest_framework.response import Response

from compute import inference
from compute.models import Cluster
from endpoints import router, traffic
from endpoints.models import Deployment
from studio.auth import HasWorkloadToken, WorkloadTokenAuthentication


class RouterTokenAuthentication(WorkloadTokenAuthentication):
    realm = "router"
    invalid = "Invalid router token, or its cluster is gone."

    def find(self, key: str) -> Cluster | None:
        return inference.cluster_of_router(key)


class RouterView(views.APIView):
    authentication_classes = (RouterTokenAuthentication,)
    permission_classes = (HasWorkloadToken,)
    throttle_classes = ()

    def cluster(self, request: Request) -> Cluster:
        assert isinstance(request.auth, Cluster)
        return request.auth


@extend_schema(exclude=True)  # for routers, not people
class TableView(RouterView):
    def get(self, request: Request, name: str) -> Response:
        table = router.table_of(name, cluster_id=self.cluster(request).pk)
        if table is None:
            raise exceptions.NotFound(f"No endpoint named {name} on this cluster.")
        return Response(table.as_json())


class SecondSerializer(serializers.Serializer[Any]):
    at = serializers.DateTimeField()
    deployment = serializers.IntegerField()
    codes = serializers.DictField(child=serializers.IntegerField(min_value=0))
    latency = serializers.ListField(
        child=serializers.IntegerField(min_value=0),
        min_length=len(traffic.BOUNDS_MS) + 1,
        max_length=len(traffic.BOUNDS_MS) + 1,
    )
    busy = serializers.IntegerField(min_value=0)
    replicas = serializers.IntegerField(min_value=0)


class CountsSerializer(serializers.Serializer[Any]):
    router = serializers.CharField(max_length=64)
    seconds = serializers.ListField(child=SecondSerializer(), max_length=10000)


@extend_schema(exclude=True)
class TrafficView(RouterView):
    def post(self, request: Request) -> Response:
        """A router's ended seconds; those of deployments on other clusters are dropped."""
        counts = CountsSerializer(data=request.data)
        counts.is_valid(raise_exception=True)
        seconds = counts.validated_data["seconds"]
        ours = set(
            Deployment.objects.filter(
                pk__in={s["deployment"] for s in seconds},
                endpoint__compute__cluster=self.cluster(request),
            ).values_list("pk", flat=True)
        )
        ended: traffic.Ended = []
        for s in seconds:
            if s["deployment"] in ours:
                second = traffic.Second(busy=s["busy"], replicas=s["replicas"])
                second.codes.update(s["codes"])
                second.latency = list(s["latency"])
                ended.append((int(s["at"].timestamp()), {s["deployment"]: second}))
        kept = traffic.save(counts.validated_data["router"], ended)
        return Response({"kept": kept})
