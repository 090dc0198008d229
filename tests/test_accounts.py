"""Logging in and out, sessions, CSRF and password change against a real server."""

from __future__ import annotations

from servers import ROOT_PASSWORD, ROOT_USER, ApiClient, GroomServer


async def test_login_me_logout(server: GroomServer) -> None:
    client = ApiClient(server.base_url)
    try:
        status, body = await client.call("GET", "/api/me")
        assert status == 401 and body["error"]["code"] == "unauthorized"
        await client.login(ROOT_USER, ROOT_PASSWORD)
        status, body = await client.call("GET", "/api/me")
        assert status == 200 and body["user"]["username"] == ROOT_USER
        assert body["user"]["role"] == "admin" and body["user"]["school_id"] is None
        status, _ = await client.call("POST", "/api/logout")
        assert status == 204
        status, _ = await client.call("GET", "/api/me")
        assert status == 401
    finally:
        await client.close()


async def test_usernames_are_not_case_sensitive(anon: ApiClient) -> None:
    """Usernames are stored lower-case (an admin types "Somchai", the account is "somchai"): the
    teacher logs in however the name is typed."""
    status, body = await anon.call("POST", "/api/login", json={
        "username": f"  {ROOT_USER.upper()} ", "password": ROOT_PASSWORD})
    assert status == 200, body
    status, body = await anon.call("GET", "/api/me")
    assert status == 200 and body["user"]["username"] == ROOT_USER.lower()


async def test_wrong_password_and_malformed_login(anon: ApiClient) -> None:
    status, body = await anon.call("POST", "/api/login", json={"username": ROOT_USER, "password": "nope"})
    assert status == 401 and body["error"]["code"] == "bad_login"
    status, body = await anon.call("POST", "/api/login", data=b"{not json",
                                   headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "malformed_json"
    status, body = await anon.call("POST", "/api/login", json={"username": 5})
    assert status == 422 and body["error"]["code"] == "invalid"


async def test_csrf_required_for_unsafe_requests(server: GroomServer) -> None:
    client = ApiClient(server.base_url)
    try:
        await client.login(ROOT_USER, ROOT_PASSWORD)
        good = client.csrf
        client.csrf = "forged-token"
        status, body = await client.call("POST", "/api/logout")
        assert status == 403 and body["error"]["code"] == "csrf"
        client.csrf = good
        status, _ = await client.call("GET", "/api/me")
        assert status == 200  # the forged request changed nothing
    finally:
        await client.close()


async def test_forged_session_cookie_is_ignored(server: GroomServer) -> None:
    client = ApiClient(server.base_url)
    try:
        forged = {"Cookie": "groom_session=eyJ1IjoxfQ.forged.sig"}
        status, _ = await client.call("GET", "/api/me", headers=forged)
        assert status == 401
    finally:
        await client.close()
