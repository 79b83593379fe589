"""Azure ML's defaultinstancetype is always present: it is what a job gets by default."""

from django.db import migrations

DEFAULT = {
    "requests": {"cpu": "100m", "memory": "2Gi"},
    "limits": {"cpu": "2", "memory": "2Gi"},
}


def create(apps, schema_editor):
    InstanceType = apps.get_model("compute", "InstanceType")
    InstanceType.objects.get_or_create(
        name="defaultinstancetype",
        defaults={"resources": DEFAULT, "description": "Used when a job names no instance type."},
    )


class Migration(migrations.Migration):
    dependencies = [("compute", "0002_initial")]
    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
