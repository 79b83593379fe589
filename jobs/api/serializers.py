"""Jobs as `az ml job show` prints them, with the studio's own additions.

The serializers are read-only. Their declared fields document the shape in the OpenAPI
schema; rendering goes through plain functions, because building DRF fields for every
job costs more than the rest of a submission.
"""

from datetime import datetime
from typing import Any

from django.urls import reverse
from rest_framework import serializers

from jobs.models import Job

SPEC_FIELDS = (
    "properties",
    "command",
    "code",
    "environment",
    "environment_variables",
    "inputs",
    "outputs",
    "limits",
    "distribution",
)


def studio_url(job: Job, request: Any) -> str:
    path = reverse("jobs:detail", args=[job.workspace.name, job.name])
    return str(request.build_absolute_uri(path)) if request is not None else path


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "name": job.name,
        "type": job.spec.get("type", "command"),
        "display_name": job.display_name,
        "experiment_name": job.experiment_name,
        "status": job.status,
        "compute": f"azureml:{job.compute_name}",
        "instance_type": job.instance_type,
        "tags": job.tags,
        "creation_context": {
            "created_at": _time(job.created_at),
            "created_by": job.created_by.get_username() if job.created_by else None,
            "created_by_type": "User",
        },
        "started_at": _time(job.started_at),
        "ended_at": _time(job.ended_at),
    }


def job_detail(job: Job, request: Any = None) -> dict[str, Any]:
    data = job_summary(job)
    spec = job.spec
    data.update({key: spec.get(key) for key in SPEC_FIELDS})
    data.update(
        id=f"/workspaces/{job.workspace.name}/jobs/{job.name}",
        description=job.description,
        resources={**spec.get("resources", {}), "instance_type": job.instance_type},
        services={"Studio": {"endpoint": studio_url(job, request), "job_service_type": "Studio"}},
        exit_code=job.exit_code,
        failure_reason=job.failure_reason,
        waiting_reason=job.waiting_reason if job.status == "Queued" else "",
        status_history=[
            {"status": change.status, "at": _time(change.at), "message": change.message}
            for change in job.status_changes.all()
        ],
        instance_type_resources=job.resources,
        enforcement_notes=job.enforcement_notes,
        output_files=job.outputs,
        instances=job.instances,
        data_inputs=job.data_inputs,
        data_outputs=job.data_outputs,
        environment_used=job.environment_used,
    )
    return data


class CreationContextSerializer(serializers.Serializer[Any]):
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField(allow_null=True)
    created_by_type = serializers.CharField()


class JobListSerializer(serializers.Serializer[Job]):
    name = serializers.CharField()
    type = serializers.CharField()
    display_name = serializers.CharField()
    experiment_name = serializers.CharField()
    status = serializers.CharField()
    compute = serializers.CharField(help_text="azureml:<compute target>")
    instance_type = serializers.CharField()
    tags = serializers.DictField()
    creation_context = CreationContextSerializer()
    started_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)

    def to_representation(self, job: Job) -> dict[str, Any]:
        return job_summary(job)


class StatusChangeSerializer(serializers.Serializer[Any]):
    status = serializers.CharField()
    at = serializers.DateTimeField()
    message = serializers.CharField()


class JobSerializer(JobListSerializer):
    id = serializers.CharField()
    description = serializers.CharField()
    properties = serializers.DictField()
    command = serializers.CharField()
    code = serializers.CharField(allow_null=True)
    environment = serializers.JSONField()
    environment_variables = serializers.DictField()
    inputs = serializers.DictField()
    outputs = serializers.DictField()
    resources = serializers.DictField()
    limits = serializers.DictField()
    distribution = serializers.DictField(allow_null=True)
    services = serializers.DictField()
    exit_code = serializers.IntegerField(allow_null=True)
    failure_reason = serializers.CharField()
    waiting_reason = serializers.CharField(help_text="Why a Queued job has not started yet.")
    status_history = StatusChangeSerializer(many=True)
    instance_type_resources = serializers.DictField()
    enforcement_notes = serializers.ListField(child=serializers.CharField())
    output_files = serializers.ListField(child=serializers.DictField())
    instances = serializers.ListField(
        child=serializers.DictField(),
        help_text="A distributed job's instances: index, phase, node, reason.",
    )
    data_inputs = serializers.DictField(
        help_text="Inputs that name data, as resolved at submission: uri, asset (name:version)."
    )
    data_outputs = serializers.DictField(
        help_text="Where each named output goes (uri), and the data asset it becomes."
    )
    environment_used = serializers.DictField(
        help_text="The environment as resolved: label, image, python, requirements."
    )

    def to_representation(self, job: Job) -> dict[str, Any]:
        return job_detail(job, self.context.get("request"))
