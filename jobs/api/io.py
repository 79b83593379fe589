"""What a job's launcher asks of the studio when it runs elsewhere (a pod): its uploads,
and a place for its outputs. Authenticated by the job's own token (`jobs.tokens`), never
a user's: `Authorization: Bearer kjt_...`."""

from __future__ import annotations

import tempfile

from django.conf import settings
from django.http import FileResponse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, views
from rest_framework.request import Request
from rest_framework.response import Response

from compute.backends import artifacts
from compute.backends.remote import remote_files
from data import services as data_services
from data.services import Location
from data.stores import StoreError, open_store
from jobs import outputs, tokens
from jobs.models import Job
from studio.auth import HasWorkloadToken, WorkloadTokenAuthentication
from studio.middleware import too_large_error


class JobTokenAuthentication(WorkloadTokenAuthentication):
    realm = "job"
    invalid = "Invalid job token, or its job has ended."

    def find(self, key: str) -> Job | None:
        return tokens.job_for(key)


def job_of(request: Request) -> Job:
    assert isinstance(request.auth, Job)  # only a job token lets the request in
    return request.auth


class JobIOView(views.APIView):
    authentication_classes = (JobTokenAuthentication,)
    permission_classes = (HasWorkloadToken,)
    throttle_classes = ()


@extend_schema(exclude=True)  # for launchers, not people
class UploadView(JobIOView):
    def get(self, request: Request, key: str) -> FileResponse:
        """One of the job's uploads (`code`, `inputs.<name>`), streamed from the store."""
        ref = (job_of(request).uploads or {}).get(key)
        if ref is None or "artifact" not in ref:
            raise exceptions.NotFound(f"The job has no upload named {key!r}.")
        return FileResponse(artifacts.store().open(ref["artifact"], "rb"), as_attachment=True)


@extend_schema(exclude=True)
class OutputView(JobIOView):
    def put(self, request: Request, output: str, path: str) -> Response:
        """Keep one output file (the raw body) in the artifact store; returns its name."""
        job = job_of(request)
        if output not in outputs.output_names(job):
            raise exceptions.ValidationError({"output": f"the job has no output {output!r}"})
        try:
            artifacts.parts_of(path)
        except artifacts.NotBeneath as exc:
            raise exceptions.ValidationError({"path": str(exc)}) from exc
        # Spooled: small files in memory, big ones on disk, never all of one in memory.
        stream, limit = request.stream, settings.STUDIO_MAX_UPLOAD_BYTES
        with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as body:
            size = 0
            while stream is not None and (chunk := stream.read(artifacts.CHUNK)):
                size += len(chunk)
                if size > limit:  # a body sent without its length is counted here
                    return Response(too_large_error(limit), status=413)
                body.write(chunk)
            body.seek(0)
            name = artifacts.publish(artifacts.output_name(job.pk, output, path), body)
        return Response({"artifact": name, "size": size}, status=201)


def _input_location(job: Job, name: str) -> Location:
    entry = (job.data_inputs or {}).get(name)
    if entry is None:
        raise exceptions.NotFound(f"The job has no data input named {name!r}.")
    try:
        location = data_services.locate(job.workspace, entry["uri"])
    except ValueError as exc:
        raise exceptions.NotFound(str(exc)) from exc
    assert location is not None
    return location


@extend_schema(exclude=True)
class InputListingView(JobIOView):
    def get(self, request: Request, name: str) -> Response:
        """A data input's files, for a launcher whose launch file could not carry them."""
        job = job_of(request)
        location = _input_location(job, name)
        kind = "uri_file" if job.spec.get("inputs", {}).get(name, {}).get("type") == "uri_file" \
            else "uri_folder"  # fmt: skip
        try:
            files, _folder = data_services.files_of(location, kind)
        except ValueError as exc:
            raise exceptions.NotFound(str(exc)) from exc
        volume = data_services.volume_of(location)
        return Response({"files": remote_files(name, files, volume)})


@extend_schema(exclude=True)
class InputFileView(JobIOView):
    def get(self, request: Request, name: str, path: str) -> FileResponse:
        """One file of a data input kept on the studio's host, for a launcher elsewhere.
        Only files beneath the input's own path: the token opens nothing else."""
        job = job_of(request)
        location = _input_location(job, name)
        if location.datastore is None:
            raise exceptions.NotFound("This input is read from its URL, not the studio.")
        base = location.path.strip("/")
        # Named by its place beneath the input's path (no '..', no link followed on the
        # way): asked once a file, so nothing lists the whole folder again.
        try:
            artifacts.parts_of(path)
        except artifacts.NotBeneath as exc:
            raise exceptions.NotFound(str(exc)) from exc
        if (job.spec.get("inputs", {}).get(name) or {}).get("type") == "uri_file":
            if path != base.rpartition("/")[2]:
                raise exceptions.NotFound(f"The input has no file {path!r}.")
            wanted = base
        else:
            wanted = f"{base}/{path}".lstrip("/")
        try:
            stream = open_store(location.datastore).open(wanted)
        except StoreError as exc:
            raise exceptions.NotFound(str(exc)) from exc
        return FileResponse(stream, as_attachment=True)


@extend_schema(exclude=True)
class BuildContextView(JobIOView):
    def get(self, request: Request) -> FileResponse:
        """The Docker context of the job's environment, for the cluster's image builder."""
        build = (job_of(request).environment_used or {}).get("build")
        if not build:
            raise exceptions.NotFound("The job's environment is not built from a context.")
        return FileResponse(artifacts.store().open(build["context"], "rb"), as_attachment=True)
