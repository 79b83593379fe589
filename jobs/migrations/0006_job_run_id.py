"""Jobs keep their MLflow run id: random from now on. Jobs made before keep the id their
run already has (it was derived from the workspace and the job's name)."""

import uuid

from django.db import migrations, models

from jobs.models import new_run_id


def keep_existing_run_ids(apps, schema_editor):  # type: ignore[no-untyped-def]
    Job = apps.get_model("jobs", "Job")
    for job in Job.objects.only("pk", "workspace_id", "name").iterator():
        derived = uuid.uuid5(uuid.NAMESPACE_URL, f"kstudio:job:{job.workspace_id}/{job.name}")
        Job.objects.filter(pk=job.pk).update(run_id=derived.hex)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0005_data_and_environment_used")]

    operations = [
        migrations.AddField(
            model_name="job",
            name="run_id",
            field=models.CharField(max_length=32, null=True, editable=False),
        ),
        migrations.RunPython(keep_existing_run_ids, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="job",
            name="run_id",
            field=models.CharField(
                default=new_run_id, editable=False, max_length=32, unique=True
            ),
        ),
    ]
