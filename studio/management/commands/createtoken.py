"""Print an API token for a user (the last line of output is the token)."""

import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from studio.access import IT_OPS_GROUP
from studio.models import ApiToken, Membership, Role, Workspace


class Command(BaseCommand):
    help = "Issue an API token for USERNAME; optionally create the user and a membership."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--create", action="store_true", help="Create the user if missing.")
        parser.add_argument("--workspace", help="Make the user a member of this workspace.")
        parser.add_argument(
            "--role",
            choices=Role.values,
            default=Role.CONTRIBUTOR,
            help="Role in --workspace (default contributor).",
        )
        parser.add_argument("--it-ops", action="store_true", help="Add the user to IT-ops.")
        parser.add_argument("--name", default="cli", help="A label for the token.")
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            help="Set the user's password from standard input (for signing in to the pages); "
            "without it, a user created here signs in with tokens only.",
        )

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        username = options["username"]
        user = users.objects.filter(username=username).first()
        if user is None:
            if not options["create"]:
                raise CommandError(f"No user {username!r}; pass --create to create it.")
            user = users.objects.create_user(username=username)
            user.set_unusable_password()
            user.save()
            if not options["password_stdin"]:
                self.stdout.write(
                    f"Created user {username!r} (no password: API and CLI by token only)."
                )
            else:
                self.stdout.write(f"Created user {username!r}.")
        if options["password_stdin"]:
            password = sys.stdin.readline().rstrip("\n")
            try:
                validate_password(password, user)
            except ValidationError as exc:
                raise CommandError("password: " + " ".join(exc.messages)) from exc
            user.set_password(password)
            user.save(update_fields=["password"])
            self.stdout.write(f"Password set for {username!r}.")
        if options["workspace"]:
            workspace = Workspace.objects.filter(name=options["workspace"]).first()
            if workspace is None:
                raise CommandError(f"No workspace {options['workspace']!r}.")
            Membership.objects.update_or_create(
                workspace=workspace, user=user, defaults={"role": options["role"]}
            )
            self.stdout.write(f"{username} is {options['role']} in {workspace.name}.")
        if options["it_ops"]:
            group, _ = Group.objects.get_or_create(name=IT_OPS_GROUP)
            user.groups.add(group)
            self.stdout.write(f"{username} is in IT-ops.")
        _token, key = ApiToken.issue(user, options["name"])
        self.stdout.write(key)
