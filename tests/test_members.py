"""Workspaces and members: IT-ops create workspaces, owners manage who is in them."""

import pytest
from django.contrib.auth.models import User

from studio.models import Membership, Workspace

MEMBERS = "/api/v1/workspaces/demo/members/"


def roles(workspace_name: str = "demo") -> dict[str, str]:
    return dict(
        Membership.objects.filter(workspace__name=workspace_name).values_list(
            "user__username", "role"
        )
    )


def fields(response) -> dict[str, str]:
    return {e["field"]: e["message"] for e in response.json()["errors"]}


# -- API --------------------------------------------------------------------------------------
def test_members_see_the_members_and_strangers_see_nothing(api, people):
    response = api(people.reader).get(MEMBERS)
    assert response.status_code == 200
    listed = {m["username"]: m["role"] for m in response.json()["results"]}
    assert listed == {"carl": "contributor", "olivia": "owner", "rita": "reader"}
    assert api(people.stranger).get(MEMBERS).status_code == 404


def test_owner_adds_a_member_who_then_sees_the_workspace(api, people):
    response = api(people.owner).post(MEMBERS, {"username": "sam", "role": "reader"})
    assert response.status_code == 201, response.content
    assert response.json() == {"username": "sam", "role": "reader"}
    assert api(people.stranger).get("/api/v1/workspaces/demo/").status_code == 200


@pytest.mark.parametrize("who", ["contributor", "reader"])
def test_only_owners_change_members(api, people, who):
    client = api(getattr(people, who))
    assert client.post(MEMBERS, {"username": "sam", "role": "owner"}).status_code == 403
    assert client.patch(MEMBERS + "rita/", {"role": "owner"}).status_code == 403
    assert client.delete(MEMBERS + "rita/").status_code == 403
    assert roles() == {"olivia": "owner", "carl": "contributor", "rita": "reader"}


def test_bad_member_input_names_the_field(api, people):
    owner = api(people.owner)
    unknown = api(people.it_ops).post(MEMBERS, {"username": "nobody", "role": "reader"})
    assert unknown.status_code == 400  # IT-ops see every account: they are told
    assert "no active user named 'nobody'" in fields(unknown)["username"]
    bad_role = owner.post(MEMBERS, {"username": "sam", "role": "admin"})
    assert bad_role.status_code == 400 and "role" in fields(bad_role)
    twice = owner.post(MEMBERS, {"username": "carl", "role": "reader"})
    assert twice.status_code == 400 and "already a member" in fields(twice)["username"]
    assert roles() == {"olivia": "owner", "carl": "contributor", "rita": "reader"}


def test_a_workspace_keeps_an_owner(api, people):
    owner = api(people.owner)
    demote = owner.patch(MEMBERS + "olivia/", {"role": "reader"})
    assert demote.status_code == 400
    assert fields(demote) == {"role": "a workspace keeps at least one owner"}
    assert owner.delete(MEMBERS + "olivia/").status_code == 400
    assert owner.patch(MEMBERS + "carl/", {"role": "owner"}).status_code == 200
    assert owner.patch(MEMBERS + "olivia/", {"role": "reader"}).status_code == 200
    assert roles() == {"olivia": "reader", "carl": "owner", "rita": "reader"}


def test_owner_removes_a_member_who_then_sees_nothing(api, people):
    assert api(people.owner).delete(MEMBERS + "rita/").status_code == 204
    assert api(people.reader).get("/api/v1/workspaces/demo/jobs/").status_code == 404


def test_it_ops_create_workspaces_with_local_compute(api, people):
    response = api(people.it_ops).post(
        "/api/v1/workspaces/", {"name": "team-a", "description": "Team A", "owner": "carl"}
    )
    assert response.status_code == 201, response.content
    assert response.json()["default_compute"] == "local"
    assert roles("team-a") == {"carl": "owner"}
    computes = api(people.contributor).get("/api/v1/workspaces/team-a/computes/").json()
    assert [c["name"] for c in computes["results"]] == ["local"]


def test_it_ops_manage_members_of_any_workspace(api, people):
    response = api(people.it_ops).post(MEMBERS, {"username": "sam", "role": "contributor"})
    assert response.status_code == 201, response.content


def test_workspace_creation_is_for_it_ops_and_checks_its_input(api, people):
    assert api(people.owner).post("/api/v1/workspaces/", {"name": "x"}).status_code == 403
    it_ops = api(people.it_ops)
    clash = it_ops.post("/api/v1/workspaces/", {"name": "demo"})
    assert clash.status_code == 400 and "already exists" in fields(clash)["name"]
    bad_name = it_ops.post("/api/v1/workspaces/", {"name": "no spaces"})
    assert bad_name.status_code == 400 and "name" in fields(bad_name)
    no_owner = it_ops.post("/api/v1/workspaces/", {"name": "team-b", "owner": "nobody"})
    assert no_owner.status_code == 400 and "owner" in fields(no_owner)
    assert list(Workspace.objects.values_list("name", flat=True)) == ["demo"]


# -- pages ------------------------------------------------------------------------------------
def test_members_page_for_readers_shows_no_controls(client, people):
    client.force_login(people.reader)
    page = client.get("/workspaces/demo/members/")
    assert page.status_code == 200
    assert b"olivia" in page.content and b"Add a member" not in page.content
    assert client.post("/workspaces/demo/members/", {"username": "sam"}).status_code == 403
    client.force_login(people.stranger)
    assert client.get("/workspaces/demo/members/").status_code == 404


def test_owner_adds_removes_and_sees_errors_inline(client, people):
    client.force_login(people.owner)
    page = client.post("/workspaces/demo/members/", {"username": "x" * 151, "role": "reader"})
    assert page.status_code == 400 and b"at most 150 characters" in page.content
    added = client.post("/workspaces/demo/members/", {"username": "sam", "role": "reader"})
    assert added.status_code == 302 and roles()["sam"] == "reader"
    client.post("/workspaces/demo/members/sam/", {"role": "contributor"})
    assert roles()["sam"] == "contributor"
    client.post("/workspaces/demo/members/sam/", {"remove": "1"})
    assert "sam" not in roles()
    refused = client.post("/workspaces/demo/members/olivia/", {"remove": "1"}, follow=True)
    assert b"a workspace keeps at least one owner" in refused.content
    assert roles()["olivia"] == "owner"


def test_console_creates_a_workspace(client, people):
    client.force_login(people.contributor)
    assert client.get("/console/workspaces/new/").status_code == 403
    client.force_login(people.it_ops)
    bad = client.post("/console/workspaces/new/", {"name": "demo", "owner": "ivan"})
    assert bad.status_code == 400 and b"already exists" in bad.content
    made = client.post("/console/workspaces/new/", {"name": "team-c", "owner": "ivan"})
    assert made.status_code == 302
    assert roles("team-c") == {"ivan": "owner"}
    assert User.objects.get(username="ivan").memberships.get().workspace.computes.get().is_default


def test_the_core_apps_migrations_need_no_feature_app():
    """The core (studio) is migrated before the apps built on it, never after: its
    migrations depend on no feature app's, so the two no longer form a cycle."""
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    needs = {
        app
        for (app_label, _), migration in loader.disk_migrations.items()
        if app_label == "studio"
        for app, _ in migration.dependencies
    }
    assert needs <= {"studio", "auth", "__setting__"}, needs


def test_an_owner_learns_nothing_of_which_user_names_exist_by_adding_members(api, people):
    """Adding a name with no account answered 'no active user named ...': an owner could
    list the studio's accounts. An owner who is not IT-ops now gets the same answer either
    way; a name with no account is invited, listed as the others are, grants nothing,
    and becomes a membership when its account is made."""
    owner = api(people.owner)
    answers = [
        owner.post(MEMBERS, {"username": name, "role": "reader"}) for name in ("sam", "nobody")
    ]
    assert [(a.status_code, a.json()) for a in answers] == [
        (201, {"username": "sam", "role": "reader"}),
        (201, {"username": "nobody", "role": "reader"}),
    ]
    listed = owner.get(MEMBERS).json()["results"]
    assert {"username": "nobody", "role": "reader"} in listed and {
        "username": "sam",
        "role": "reader",
    } in listed
    shown = [owner.get(MEMBERS + f"{n}/").json() for n in ("sam", "nobody")]
    assert shown == [
        {"username": "sam", "role": "reader"},
        {"username": "nobody", "role": "reader"},
    ]
    assert owner.patch(MEMBERS + "nobody/", {"role": "contributor"}).status_code == 200
    again = owner.post(MEMBERS, {"username": "nobody", "role": "reader"})
    assert again.status_code == 400 and "already a member" in fields(again)["username"]
    assert "nobody" not in roles()  # an invitation grants nothing

    # The account is made: it is a contributor of demo at once.
    nobody = User.objects.create_user("nobody", password="pw-nobody-12345")
    assert roles()["nobody"] == "contributor"
    assert api(nobody).get("/api/v1/workspaces/demo/").status_code == 200
    assert owner.get(MEMBERS + "nobody/").json() == {"username": "nobody", "role": "contributor"}

    # Removing an invitation, as a member.
    owner.post(MEMBERS, {"username": "later", "role": "reader"})
    assert owner.delete(MEMBERS + "later/").status_code == 204
    User.objects.create_user("later", password="pw-later-12345")
    assert "later" not in roles()
