"""Datastores say whether their storage may answer inside the studio's network. Those
made before were checked when saved, so they keep working as they did."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("data", "0002_default_datastores")]

    operations = [
        migrations.AddField(
            model_name="datastore", name="inward", field=models.BooleanField(default=True)
        ),
        migrations.AlterField(
            model_name="datastore", name="inward", field=models.BooleanField(default=False)
        ),
    ]
