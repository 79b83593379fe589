"""Jobs as `az ml job show` prints them, with the studio's own additions."""

from typing import Any

from django.urls import reverse
from rest_framework import serializers

from jobs.models import Job, StatusChange


def studio_url(job: Job, request: Any) -> str:
    path = reverse("jobs:detail", args=[job.workspace.name, job.name])
    return str(request.build_absolute_uri(path)) if request is not None else path


class StatusChangeSerializer(serializers.ModelSerializer[StatusChange]):
    class Meta:
        model = StatusChange
        fields = ("status", "at", "message")


class JobListSerializer(serializers.ModelSerializer[Job]):
    type = serializers.SerializerMethodField()
    compute = serializers.SerializerMethodField()
    creation_context = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = (
            "name",
            "type",
            "display_name",
            "experiment_name",
            "status",
            "compute",
            "instance_type",
            "tags",
            "creation_context",
            "started_at",
            "ended_at",
        )

    def get_type(self, job: Job) -> str:
        return str(job.spec.get("type", "command"))

    def get_compute(self, job: Job) -> str:
        return f"azureml:{job.compute_name}"

    def get_creation_context(self, job: Job) -> dict[str, Any]:
        return {
            "created_at": job.created_at.isoformat(),
            "created_by": job.created_by.get_username() if job.created_by else None,
            "created_by_type": "User",
        }


class JobSerializer(JobListSerializer):
    id = serializers.SerializerMethodField()
    services = serializers.SerializerMethodField()
    status_history = StatusChangeSerializer(source="status_changes", many=True, read_only=True)

    class Meta(JobListSerializer.Meta):
        fields: tuple[str, ...] = (  # type: ignore[assignment]
            *JobListSerializer.Meta.fields,
            "id",
            "description",
            "services",
            "exit_code",
            "failure_reason",
            "status_history",
            "enforcement_notes",
        )

    # Copied from the stored spec as submitted (the az ml job show fields), plus the
    # instance type's resources as they were at submission and the collected output files.
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

    def to_representation(self, job: Job) -> dict[str, Any]:
        data = super().to_representation(job)
        spec = job.spec
        for key in self.SPEC_FIELDS:
            data[key] = spec.get(key)
        data["resources"] = {**spec.get("resources", {}), "instance_type": job.instance_type}
        data["instance_type_resources"] = job.resources
        data["output_files"] = job.outputs
        return data

    def get_id(self, job: Job) -> str:
        return f"/workspaces/{job.workspace.name}/jobs/{job.name}"

    def get_services(self, job: Job) -> dict[str, Any]:
        return {
            "Studio": {
                "endpoint": studio_url(job, self.context.get("request")),
                "job_service_type": "Studio",
            }
        }
