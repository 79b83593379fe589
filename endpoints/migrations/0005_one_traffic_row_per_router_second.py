from typing import Any

from django.db import migrations, models
from django.db.models import Min


def drop_repeats(apps: Any, schema_editor: Any) -> None:
    """Before the constraint: of rows for one router's same second, keep the first (only
    the autoscaler could write two, and the charts take the larger replica count anyway)."""
    traffic = apps.get_model("endpoints", "TrafficSecond")
    repeated = (
        traffic.objects.values("deployment", "at", "router")
        .annotate(first=Min("pk"), rows=models.Count("pk"))
        .filter(rows__gt=1)
    )
    for group in repeated:
        traffic.objects.filter(
            deployment=group["deployment"], at=group["at"], router=group["router"]
        ).exclude(pk=group["first"]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("endpoints", "0004_deployment_logs"),
    ]

    operations = [
        migrations.RunPython(drop_repeats, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="trafficsecond",
            constraint=models.UniqueConstraint(
                fields=("deployment", "at", "router"), name="one_traffic_row_per_router_second"
            ),
        ),
    ]
