"""One definition of how jobs are searched, filtered and sorted: the job list page and
the API both use it, so `?q=`, `?status=`, `?experiment_name=` and `?ordering=` mean the
same everywhere."""

from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast

from jobs.models import Job, Status

# (field, the name in ?ordering=): a leading "-" sorts descending.
SORTABLE = (
    ("name", "name"),
    ("status", "status"),
    ("experiment_name", "experiment"),
    ("compute_name", "compute"),
    ("instance_type", "instance_type"),
    ("created_at", "created"),
    ("started_at", "started"),
    ("ended_at", "ended"),
)


class JobFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(
        method="search",
        label="Search",
        help_text="Part of the name, display name, experiment or a tag, any case.",
    )
    status = django_filters.ChoiceFilter(
        choices=Status.choices, help_text="Only jobs in this state."
    )
    experiment_name = django_filters.CharFilter(
        label="Experiment", help_text="Only this experiment's jobs."
    )
    ordering = django_filters.OrderingFilter(
        fields=SORTABLE, help_text="Sort by " + ", ".join(name for _f, name in SORTABLE)
    )

    class Meta:
        model = Job
        fields = ("q", "status", "experiment_name")

    def search(self, queryset: QuerySet[Job], name: str, value: str) -> QuerySet[Job]:
        value = value.strip()
        if not value:
            return queryset
        return queryset.annotate(tags_text=Cast("tags", TextField())).filter(
            Q(name__icontains=value)
            | Q(display_name__icontains=value)
            | Q(experiment_name__icontains=value)
            | Q(tags_text__icontains=value)
        )
