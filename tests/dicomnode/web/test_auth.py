"""Authentication: token (header, login cookie, link), basic, none; refusals and CSRF."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from dicomnode.config import WebSettings
from dicomnode.errors import ConfigError
from dicomnode.web.app import create_app
from dicomnode.web.auth import COOKIE_NAME

from .conftest import TOKEN, NodeState, make_client

PROTECTED = ("/api/counts", "/api/studies", "/metrics", "/dicom-web/studies", "/node/",
             "/api/openapi.json")


def with_web(state: NodeState, **changes: object) -> TestClient:
    settings = replace(state.settings, web=replace(state.settings.web, **changes))
    return TestClient(create_app(settings, state.sessions, state.storage))


@pytest.mark.parametrize("path", PROTECTED)
def test_token_required(node_state: NodeState, path: str) -> None:
    anonymous = make_client(node_state, auth=False)
    refused = anonymous.get(path, headers={"Accept": "application/json"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "Test^Synthetic" not in refused.text
    wrong = anonymous.get(path, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert make_client(node_state).get(path).status_code == 200


def test_healthz_needs_no_auth(node_state: NodeState) -> None:
    response = make_client(node_state, auth=False).get("/healthz")
    assert response.status_code in (200, 503)  # answered, not 401
    assert response.json()["checks"]["database"]["ok"] is True


def test_browser_login_sets_a_cookie_that_also_opens_dicomweb(node_state: NodeState) -> None:
    browser = make_client(node_state, auth=False)
    page = browser.get("/node/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fnode%2F"
    bad = browser.post("/login", data={"token": "guess", "next": "/node/"})
    assert bad.status_code == 401 and COOKIE_NAME not in browser.cookies
    good = browser.post("/login", data={"token": TOKEN, "next": "/node/"}, follow_redirects=False)
    assert good.status_code == 303 and good.headers["location"] == "/node/"
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert TOKEN not in cookie
    assert browser.get("/node/").status_code == 200
    assert browser.get("/dicom-web/studies").status_code == 200  # the viewer's own requests
    browser.post("/logout")
    assert browser.get("/api/counts").status_code == 401


def test_login_refuses_foreign_redirects(node_state: NodeState) -> None:
    browser = make_client(node_state, auth=False)
    done = browser.post("/login", data={"token": TOKEN, "next": "//evil.example/x"},
                        follow_redirects=False)
    assert done.headers["location"] == "/node/"


def test_token_in_a_link_opens_nothing(node_state: NodeState) -> None:
    browser = make_client(node_state, auth=False)
    for path in ("/api/counts", "/metrics", "/dicom-web/studies"):
        assert browser.get(f"{path}?token={TOKEN}").status_code == 401
    page = browser.get(f"/viewer?StudyInstanceUIDs=1.2.3&token={TOKEN}",
                       headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
    assert COOKIE_NAME not in browser.cookies


def test_cross_site_post_with_cookie_is_refused(fresh_state: NodeState) -> None:
    browser = make_client(fresh_state, auth=False)
    browser.post("/login", data={"token": TOKEN})
    export_id = fresh_state.export_ids["failed"]
    forged = browser.post(f"/node/exports/{export_id}/retry",
                          headers={"Origin": "http://evil.example"}, follow_redirects=False)
    assert forged.status_code == 403
    same = browser.post(f"/node/exports/{export_id}/retry",
                        headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert same.status_code == 303


def test_basic_auth(node_state: NodeState) -> None:
    client = with_web(node_state, auth="basic", username="radiology", password="s3cret")
    refused = client.get("/api/counts")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Basic")
    assert client.get("/node/", headers={"Accept": "text/html"}).status_code == 401  # no form
    assert client.get("/api/counts", auth=("radiology", "wrong")).status_code == 401
    assert client.get("/api/counts", auth=("other", "s3cret")).status_code == 401
    garbage = {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}
    assert client.get("/api/counts", headers=garbage).status_code == 401
    assert client.get("/api/counts", auth=("radiology", "s3cret")).status_code == 200


def test_auth_none_is_open(node_state: NodeState) -> None:
    client = with_web(node_state, auth="none")
    assert client.get("/api/counts").status_code == 200


@pytest.mark.parametrize("web", [
    WebSettings(auth="token", token=""),
    WebSettings(auth="basic", username="u", password=""),
])
def test_refuses_to_start_without_credentials(node_state: NodeState, web: WebSettings) -> None:
    settings = replace(node_state.settings, web=web)
    with pytest.raises(ConfigError, match="auth"):
        create_app(settings, node_state.sessions, node_state.storage)
