"""Workspaces made before datastores get their workspaceblobstore, as new ones do."""

from pathlib import Path

from django.conf import settings
from django.db import migrations


def seed(apps, schema_editor):
    Workspace = apps.get_model("studio", "Workspace")
    Datastore = apps.get_model("data", "Datastore")
    for workspace in Workspace.objects.exclude(datastores__is_default=True):
        Datastore.objects.get_or_create(
            workspace=workspace,
            name="workspaceblobstore",
            defaults={
                "kind": "local",
                "location": {"path": str(Path(settings.STUDIO_DATASTORES_DIR) / str(workspace.pk))},
                "description": "The workspace's default datastore.",
                "is_default": True,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("data", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
