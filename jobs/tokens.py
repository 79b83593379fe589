"""Job tokens: what a job's own launcher, on a host that shares no disk with the studio (a
pod), shows to fetch the job's uploads and publish its outputs (`jobs.api.io`).

A token is the job's id signed with the studio's secret key: the same job always gets the
same token, so a retried launch hands its pod the same one and nothing is stored. It opens
only that job's uploads and outputs, and only while the job has not ended.
"""

from __future__ import annotations

from typing import Any

from jobs.models import Job
from studio.tokens import SignedToken

TOKENS = SignedToken("kjt_", salt="kstudio.job-token")
PREFIX = TOKENS.prefix


def token_for(job: Job) -> str:
    return TOKENS.make(str(job.pk))


def job_for(token: str) -> Job | None:
    """The live job this token was made for, or None (forged, or the job has ended)."""
    pk = TOKENS.read(token)
    if pk is None or not pk.isdigit():
        return None
    job = Job.objects.select_related("workspace", "created_by").filter(pk=int(pk)).first()
    if job is None or job.is_terminal:
        return None
    return job


def tracking_identity(token: str) -> tuple[Any, str, str] | None:
    """For the MLflow API (`STUDIO_TRACKING_IDENTITIES`): a live job's token acts as the
    job's author, in the job's workspace, on the job's own run only."""
    job = job_for(token)
    if job is None or job.created_by is None:
        return None
    return job.created_by, job.workspace.name, job.run_id
