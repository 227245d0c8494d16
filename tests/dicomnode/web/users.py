"""Web users for the tests of ``[web] auth = "users"``: one per role, a client per user."""

from __future__ import annotations

from dataclasses import replace

from fastapi import FastAPI
from fastapi.testclient import TestClient

from dicomnode.db.users import UserStore
from dicomnode.web.app import create_app

from .conftest import NodeState

MACHINE_TOKEN = "machine-token-0123456789abcdef"
PASSWORDS = {
    "rita": ("radiologist", "rita-password-1"),
    "otto": ("operator", "otto-password-1"),
    "ada": ("admin", "ada-password-12"),
}


def users_app(state: NodeState) -> FastAPI:
    """The web app of ``state`` with ``auth = "users"``, the machine token and three users."""
    store = UserStore(state.sessions, 3600)
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
