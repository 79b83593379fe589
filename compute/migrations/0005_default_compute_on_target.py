"""The workspace's default compute moves onto the compute targets (`is_default`), so the
core app no longer refers to compute and the two apps' migrations no longer depend on each
other. studio 0001 was edited to drop `Workspace.default_compute`; a database made before
still has that column, which this step copies from and then removes."""

from django.db import migrations, models

OLD_COLUMN = "default_compute_id"


def move_defaults(apps, schema_editor):
    connection = schema_editor.connection
    Workspace = apps.get_model("studio", "Workspace")
    table = Workspace._meta.db_table
    with connection.cursor() as cursor:
        columns = [c.name for c in connection.introspection.get_table_description(cursor, table)]
        if OLD_COLUMN not in columns:
            return  # a database made after the edit
        cursor.execute(f"SELECT {OLD_COLUMN} FROM {schema_editor.quote_name(table)}")
        defaults = [row[0] for row in cursor.fetchall() if row[0] is not None]
    ComputeTarget = apps.get_model("compute", "ComputeTarget")
    ComputeTarget.objects.filter(pk__in=defaults).update(is_default=True)
    if connection.vendor == "sqlite":
        # SQLite cannot drop a column with a foreign key: rebuild the table from the model,
        # which no longer has it (Django's own way for SQLite's schema changes).
        schema_editor._remake_table(Workspace)
    else:
        schema_editor.execute(
            f"ALTER TABLE {schema_editor.quote_name(table)} DROP COLUMN {OLD_COLUMN} CASCADE"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("compute", "0004_target_updated_at"),
        ("studio", "0002_token_expiry"),
    ]

    operations = [
        migrations.AddField(
            model_name="computetarget",
            name="is_default",
            field=models.BooleanField(default=False),
        ),
        migrations.RunPython(move_defaults, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="computetarget",
            constraint=models.UniqueConstraint(
                condition=models.Q(("is_default", True)),
                fields=("workspace",),
                name="one_default_compute_per_workspace",
            ),
        ),
    ]
