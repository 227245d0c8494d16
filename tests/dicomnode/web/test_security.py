"""The attacker's list of issue 12, one test per item: sessions random, expiring and ended at
logout; no credential in a URL; the machine token only reads; roles; security headers; URLs
from the configured base URL, not the Host header; a malformed stored file answered with a
message; passwords stored as hashes only."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from dicomnode.db.models import WebSession, WebUser, utcnow
from dicomnode.web.auth import COOKIE_NAME

from .conftest import NodeState
from .users import MACHINE_TOKEN, PASSWORDS, logged_in, users_app


def test_each_login_gets_a_new_random_session(node_state: NodeState) -> None:
    app = users_app(node_state)
    first, second = logged_in(app, "rita"), logged_in(app, "rita")
    a, b = first.cookies[COOKIE_NAME], second.cookies[COOKIE_NAME]
    assert a != b and len(a) >= 40
    with node_state.sessions() as s:
        stored = set(s.scalars(select(WebSession.secret_sha256)))
    assert a not in stored and b not in stored  # only digests are kept


def test_logout_ends_the_session_and_the_old_cookie_is_refused(node_state: NodeState) -> None:
    app = users_app(node_state)
    browser = logged_in(app, "otto")
    cookie = browser.cookies[COOKIE_NAME]
    assert browser.get("/api/counts").status_code == 200
    browser.post("/logout")
    replay = TestClient(app, cookies={COOKIE_NAME: cookie})
    assert replay.get("/api/counts").status_code == 401
    assert replay.get("/dicom-web/studies").status_code == 401


def test_an_expired_session_is_refused(node_state: NodeState) -> None:
    app = users_app(node_state)
    browser = logged_in(app, "ada")
    with node_state.sessions() as s, s.begin():
        s.execute(update(WebSession).where(WebSession.user_name == "ada")
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert browser.get("/api/counts").status_code == 401


def test_removing_a_user_ends_their_sessions(fresh_state: NodeState) -> None:
    from dicomnode.db.users import UserStore

    app = users_app(fresh_state)
    browser = logged_in(app, "otto")
    UserStore(fresh_state.sessions, 60).remove("otto")
    assert browser.get("/api/counts").status_code == 401


def test_wrong_password_and_unknown_user_are_refused(node_state: NodeState) -> None:
    client = TestClient(users_app(node_state))
    for name, password in (("rita", "wrong-password"), ("nobody", "rita-password-1")):
        response = client.post("/login", data={"username": name, "password": password})
        assert response.status_code == 401 and COOKIE_NAME not in client.cookies
        assert client.get("/api/counts", auth=(name, password)).status_code == 401
    assert client.get("/api/counts", auth=("rita", PASSWORDS["rita"][1])).status_code == 200


def test_passwords_are_stored_as_argon2_hashes(node_state: NodeState) -> None:
    users_app(node_state)
    with node_state.sessions() as s:
        hashes = list(s.scalars(select(WebUser.password_hash)))
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)
    assert not any(password in h for _role, password in PASSWORDS.values() for h in hashes)


def test_no_credential_is_accepted_in_a_url(node_state: NodeState) -> None:
    client = TestClient(users_app(node_state))
    for path in ("/api/counts", "/dicom-web/studies", "/metrics", "/node/"):
        assert client.get(f"{path}?token={MACHINE_TOKEN}").status_code in (401, 303)
    assert client.get("/metrics", follow_redirects=False,
                      params={"access_token": MACHINE_TOKEN}).status_code == 401


def test_the_machine_token_only_reads(node_state: NodeState) -> None:
    machine = TestClient(users_app(node_state),
                         headers={"Authorization": f"Bearer {MACHINE_TOKEN}"})
    for path in ("/api/counts", "/metrics", "/dicom-web/studies"):
        assert machine.get(path).status_code == 200
    export_id = node_state.export_ids["failed"]
    assert machine.post(f"/api/exports/{export_id}/retry").status_code == 403
    assert machine.post(f"/api/jobs/{node_state.job_id}/verdict", json={}).status_code == 403
    assert machine.get("/node/").status_code == 403  # pages are for people


def test_a_radiologist_may_not_retry_exports(node_state: NodeState) -> None:
    rita = logged_in(users_app(node_state), "rita")
    export_id = node_state.export_ids["failed"]
    assert rita.post(f"/api/exports/{export_id}/retry").status_code == 403
    assert rita.post(f"/api/jobs/{node_state.job_id}/requeue").status_code == 403


def test_operator_actions_are_audited_with_the_users_name(fresh_state: NodeState) -> None:
    otto = logged_in(users_app(fresh_state), "otto")
    export_id = fresh_state.export_ids["failed"]
    assert otto.post(f"/api/exports/{export_id}/retry").status_code == 200
    assert otto.post(f"/api/jobs/{fresh_state.job_id}/requeue").status_code == 200
    timeline = otto.get(f"/api/studies/{fresh_state.study_a}/timeline").json()["events"]
    actions = [e for e in timeline if e["kind"].startswith("action-")]
    assert {e["kind"] for e in actions} == {"action-export-retry", "action-job-requeue"}
    assert all(e["message"].startswith("otto:") for e in actions)


def test_cross_site_forms_are_refused(fresh_state: NodeState) -> None:
    otto = logged_in(users_app(fresh_state), "otto")
    forged = otto.post(f"/node/jobs/{fresh_state.job_id}/requeue",
                       headers={"Origin": "http://evil.example"}, follow_redirects=False)
    assert forged.status_code == 403


def test_security_headers_on_pages_api_and_viewer(node_state: NodeState) -> None:
    browser = logged_in(users_app(node_state), "ada")
    for path in ("/node/", "/api/counts", "/login", "/viewer"):
        headers = browser.get(path).headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    page_csp = browser.get("/node/").headers["content-security-policy"]
    assert "script-src 'self';" in page_csp and "unsafe-inline" not in page_csp


def test_urls_come_from_the_base_url_not_the_host_header(node_state: NodeState) -> None:
    browser = logged_in(users_app(node_state), "ada")
    response = browser.get("/dicom-web/studies", headers={"Host": "evil.example"})
    [study] = [s for s in response.json() if s["0020000D"]["Value"][0] == node_state.study_a]
    assert study["00081190"]["Value"][0] == (
        f"https://node.example.org/dicom-web/studies/{node_state.study_a}")
    assert "evil.example" not in response.text


def test_a_malformed_stored_file_gives_a_clear_error_on_frames(fresh_state: NodeState) -> None:
    browser = logged_in(users_app(fresh_state), "ada")
    ds = fresh_state.chest[0]
    fresh_state.path_of(ds.SOPInstanceUID).write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    response = browser.get(
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1",
        headers={"Accept": "multipart/related; type=application/octet-stream; "
                           "transfer-syntax=*"})
    assert 400 <= response.status_code < 600 and response.status_code != 500
    assert response.json()["detail"]


def test_settings_refuse_bad_base_urls_and_model_refs() -> None:
    import pytest

    from dicomnode.config import load_settings
    from dicomnode.errors import ConfigError

    for bad in ({"web.base_url": "node.example.org"}, {"web.base_url": "https://h/x?y=1"},
                {"pipeline.shadow_classifier": "decovnet"}, {"web.auth": "users2"}):
        with pytest.raises(ConfigError):
            load_settings(None, bad)
    ok = load_settings(None, {"web.base_url": "https://node.example.org/ct",
                              "pipeline.shadow_classifier": "decovnet@1.1.0-synthetic"})
    assert ok.web.base_url == "https://node.example.org/ct"


def test_same_origin_forms_pass_with_no_referrer_and_other_sites_do_not(
    fresh_state: NodeState,
) -> None:
    """With Referrer-Policy no-referrer a browser sends Origin: null on same-origin form
    posts; Sec-Fetch-Site tells the truth (scripts cannot set it)."""
    otto = logged_in(users_app(fresh_state), "otto")
    url = f"/node/jobs/{fresh_state.job_id}/requeue"
    for site in ("same-site", "cross-site"):
        refused = otto.post(url, headers={"Sec-Fetch-Site": site, "Origin": "null"},
                            follow_redirects=False)
        assert refused.status_code == 403
    assert otto.post(url, headers={"Origin": "null"}, follow_redirects=False).status_code == 403
    done = otto.post(url, headers={"Sec-Fetch-Site": "same-origin", "Origin": "null"},
                     follow_redirects=False)
    assert done.status_code == 303
