"""Web users for the tests of ``[web] auth = "users"``: one per role, a client per user."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dicomnode.db.models import Job, JobState, Verdict
from dicomnode.db.users import UserStore
from dicomnode.web.app import create_app

from .conftest import NodeState

# Cheap Argon2id parameters keep the tests quick; the node hashes with the library's defaults.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
MACHINE_TOKEN = "machine-token-0123456789abcdef"
PASSWORDS = {
    "rita": ("radiologist", "rita-password-1"),
    "otto": ("operator", "otto-password-1"),
    "ada": ("admin", "ada-password-12"),
}


def users_app(state: NodeState) -> FastAPI:
    """The web app of ``state`` with ``auth = "users"``, the machine token and three users."""
    store = UserStore(state.sessions, 3600, hasher=FAST_HASHER)
    known = {u.name for u in store.list()}
    for name, (role, password) in PASSWORDS.items():
        if name not in known:
            store.add(name, role, password)
    web = replace(state.settings.web, auth="users", token=MACHINE_TOKEN,
                  base_url="https://node.example.org")
    return create_app(replace(state.settings, web=web), state.sessions, state.storage)


def logged_in(app: FastAPI, name: str) -> TestClient:
    """A browser client signed in as ``name`` through the login form."""
    client = TestClient(app)
    response = client.post("/login", data={"username": name, "password": PASSWORDS[name][1],
                                           "next": "/node/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return client


def answer(label: str, name: str = "decovnet", version: str = "1") -> dict[str, Any]:
    return {"name": name, "version": version, "label": label, "p_covid": None}


def add_verdicts(state: NodeState, rows: list[tuple[str, str, str | None, dict[str, str],
                                                     int, datetime]]) -> None:
    """One finished job per row: (primary label, agree/disagree, shadow label, findings,
    missed, when)."""
    with state.sessions() as s, s.begin():
        base = s.get_one(Job, state.job_id)
        for primary, classification, shadow, findings, missed, when in rows:
            job = Job(study_id=base.study_id, series_id=base.series_id, fingerprint="x",
                      instance_count=1, state=JobState.DONE)
            s.add(job)
            s.flush()
            s.add(Verdict(job_id=job.id, user_name="rita", created_at=when,
                          classification=classification, findings=findings,
                          missed_findings=missed,
                          models={"primary": answer(primary),
                                  "shadow": answer(shadow, "cnn-bert", "2") if shadow else None,
                                  "lesions": []}))
