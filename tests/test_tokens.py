"""Users' own API tokens (page and API), expiry, and rate limits on signing in and issuing."""

from __future__ import annotations

import io
import logging
import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from studio.logging import HandshakesAtDebug
from studio.models import ApiToken

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/workspaces/demo/jobs/"


def bearer(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def test_a_user_creates_uses_and_revokes_a_token_on_the_profile_page(client, people):
    client.force_login(people.contributor)
    page = client.post("/profile/", {"name": "laptop", "expires_in_days": "30"})
    assert page.status_code == 200
    key = re.search(r'<pre class="code" id="new-token">(kst_[^<]+)</pre>', page.content.decode())[1]
    assert bearer(key).get(JOBS).status_code == 200
    token = ApiToken.objects.get(user=people.contributor)
    assert token.name == "laptop"
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    listing = client.get("/profile/").content.decode()
    assert token.hint in listing and key not in listing  # shown once, never again
    client.post(f"/profile/tokens/{token.pk}/revoke/")
    assert bearer(key).get(JOBS).status_code == 401


def test_nobody_revokes_anothers_token(client, people):
    token, key = ApiToken.issue(people.owner, "theirs")
    client.force_login(people.contributor)
    assert client.post(f"/profile/tokens/{token.pk}/revoke/").status_code == 404
    assert bearer(key).get(JOBS).status_code == 200


def test_an_expired_token_is_refused(people):
    _token, key = ApiToken.issue(people.reader, "old", timezone.now() - timedelta(seconds=1))
    response = bearer(key).get(JOBS)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_tokens_through_the_api(api, people):
    client = api(people.reader)
    made = client.post("/api/v1/tokens/", {"name": "ci", "expires_in_days": 7}, format="json")
    assert made.status_code == 201
    key = made.json()["key"]
    assert bearer(key).get(JOBS).status_code == 200
    listed = client.get("/api/v1/tokens/").json()["results"]
    assert {t["name"] for t in listed} == {"test", "ci"}
    assert all("key" not in t for t in listed)
    assert client.delete(f"/api/v1/tokens/{made.json()['id']}/").status_code == 204
    assert bearer(key).get(JOBS).status_code == 401
    other, _ = ApiToken.issue(people.owner, "theirs")
    assert client.delete(f"/api/v1/tokens/{other.pk}/").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [({"name": ""}, "name"), ({"name": "x", "expires_in_days": 0}, "expires_in_days")],
)
def test_bad_token_requests_name_the_field(api, people, body, field):
    response = api(people.reader).post("/api/v1/tokens/", body, format="json")
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert ApiToken.objects.filter(user=people.reader).count() == 1  # the client's own


def test_sign_in_is_rate_limited_per_username(client, people, monkeypatch):
    monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, "sign_in_username", "3/min")
    for _ in range(3):
        wrong = client.post("/login/", {"username": "carl", "password": "nope"})
        assert wrong.status_code == 200
    blocked = client.post("/login/", {"username": "carl", "password": "pw-carl-12345"})
    assert blocked.status_code == 429
    assert "Too many sign-in attempts" in blocked.content.decode()
    assert int(blocked["Retry-After"]) > 0
    assert "_auth_user_id" not in client.session  # even the right password waits
    other = client.post("/login/", {"username": "rita", "password": "pw-rita-12345"})
    assert other.status_code == 302  # another user is not locked out by carl's


def test_sign_in_is_rate_limited_per_address(client, people, monkeypatch):
    monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, "sign_in_address", "2/min")
    for name in ("a", "b"):
        assert client.post("/login/", {"username": name, "password": "x"}).status_code == 200
    assert client.post("/login/", {"username": "c", "password": "x"}).status_code == 429


def test_issuing_tokens_is_rate_limited(api, client, people, monkeypatch):
    monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, "tokens", "2/hour")
    rest = api(people.reader)
    assert rest.post("/api/v1/tokens/", {"name": "a"}, format="json").status_code == 201
    client.force_login(people.reader)
    assert client.post("/profile/", {"name": "b", "expires_in_days": ""}).status_code == 200
    assert rest.post("/api/v1/tokens/", {"name": "c"}, format="json").status_code == 429
    page = client.post("/profile/", {"name": "d", "expires_in_days": ""}, follow=True)
    assert "Too many new tokens" in page.content.decode()
    assert set(ApiToken.objects.filter(user=people.reader).values_list("name", flat=True)) == {
        "test",
        "a",
        "b",
    }


def test_createtoken_can_set_a_password(people, monkeypatch):
    from django.contrib.auth.models import User

    monkeypatch.setattr("sys.stdin", io.StringIO("a-Long-new-passphrase-7\n"))
    out = io.StringIO()
    call_command("createtoken", "newbie", "--create", "--password-stdin", stdout=out)
    assert User.objects.get(username="newbie").check_password("a-Long-new-passphrase-7")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    with pytest.raises(CommandError, match="password: This password is too short"):
        call_command("createtoken", "newbie", "--password-stdin", stdout=io.StringIO())


def test_websocket_handshakes_are_logged_at_debug_only():
    handshake = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        "",
        0,
        '%s - "WebSocket %s" [accepted]',
        ("1.2.3.4", "/ws/"),
        None,
    )
    other = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "Started", (), None)
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)
    assert HandshakesAtDebug().filter(handshake) is False
    assert handshake.levelname == "DEBUG"
    assert HandshakesAtDebug().filter(other) is True
