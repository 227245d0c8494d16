"""Web users and their sessions (``[web] auth = "users"``).

Passwords are hashed with Argon2id (argon2-cffi, its default parameters); only the hash is
stored. A page session is a random secret (``secrets.token_urlsafe``) handed to the browser in
a cookie; the database keeps its sha256, so a copy of the database opens no session. Sessions
expire and are deleted at logout; removing a user deletes their sessions too.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db.models import WebSession, WebUser, utcnow
from dicomnode.errors import DicomNodeError

ROLES = ("radiologist", "operator", "admin")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
SESSION_SECRET_BYTES = 32

_HASHER = PasswordHasher()
# Verified when the user does not exist, so that the time taken does not tell whether a name
# is known.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class UserError(DicomNodeError):
    """A user cannot be added or removed as asked (bad name, role, password, duplicate)."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a user's name and role ("machine" for the [web] token)."""

    name: str
    role: str

    @property
    def is_person(self) -> bool:
        return self.role in ROLES


@dataclass(frozen=True)
class UserView:
    name: str
    role: str
    created_at: datetime


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_new_user(name: str, role: str, password: str) -> None:
    if not NAME_RE.match(name):
        raise UserError(f"user name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise UserError(f"role {role!r}: use one of {', '.join(ROLES)}")
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise UserError(
            f"the password must have {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
        )


class UserStore:
    """Users and sessions in the node's database."""

    def __init__(
        self, sessions: sessionmaker[Session], session_lifetime_s: float,
        token_user: str | None = None, hasher: PasswordHasher = _HASHER,
    ) -> None:
        """``token_user``: with ``[web] auth = "token"``, the name of sessions opened with
        the shared token (they have no user row and act as admin); None refuses them.
        ``hasher`` hashes new passwords (argon2-cffi's defaults; verification reads the
        parameters from each stored hash)."""
        self._sessions = sessions
        self._hasher = hasher
        self._lifetime = timedelta(seconds=session_lifetime_s)
        self._token_user = token_user

    def add(self, name: str, role: str, password: str) -> None:
        check_new_user(name, role, password)
        with self._sessions() as session, session.begin():
            if session.scalar(select(WebUser.id).where(WebUser.name == name)) is not None:
                raise UserError(f"user {name!r} exists already (remove it first)")
            session.add(WebUser(name=name, role=role, password_hash=self._hasher.hash(password)))

    def remove(self, name: str) -> bool:
        """Delete the user and end their sessions; False when there was no such user."""
        with self._sessions() as session, session.begin():
            user = session.scalar(select(WebUser).where(WebUser.name == name))
            session.execute(delete(WebSession).where(WebSession.user_name == name))
            if user is None:
                return False
            session.delete(user)
            return True

    def list(self) -> list[UserView]:
        with self._sessions() as session:
            rows = session.scalars(select(WebUser).order_by(WebUser.name))
            return [UserView(u.name, u.role, u.created_at) for u in rows]

    def verify(self, name: str, password: str) -> Principal | None:
        """The user when ``password`` is theirs; None otherwise (same work either way)."""
        if len(password) > MAX_PASSWORD_LENGTH or len(name) > 64:
            return None
        with self._sessions() as session:
            user = session.scalar(select(WebUser).where(WebUser.name == name))
            stored = user.password_hash if user is not None else _DUMMY_HASH
            role = user.role if user is not None else ""
        try:
            _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return Principal(name, role) if user is not None else None

    def open_session(self, principal: Principal) -> str:
        """A new random session secret for ``principal`` (the cookie's value)."""
        secret = secrets.token_urlsafe(SESSION_SECRET_BYTES)
        now = utcnow()
        with self._sessions() as session, session.begin():
            session.execute(delete(WebSession).where(WebSession.expires_at < now))
            session.add(WebSession(secret_sha256=_digest(secret), user_name=principal.name,
                                   created_at=now, expires_at=now + self._lifetime))
        return secret

    def session_user(self, secret: str) -> Principal | None:
        """The user of a live session; None for an unknown, ended or expired one."""
        if not secret or len(secret) > 128:
            return None
        with self._sessions() as session:
            row = session.execute(
                select(WebSession.user_name, WebUser.role)
                .outerjoin(WebUser, WebSession.user_name == WebUser.name)
                .where(WebSession.secret_sha256 == _digest(secret))
                .where(WebSession.expires_at > utcnow())
            ).first()
        if row is None:
            return None
        name, role = row
        if self._token_user is not None:
            return Principal(name, "admin") if name == self._token_user else None
        return None if role is None else Principal(name, role)

    def end_session(self, secret: str) -> None:
        with self._sessions() as session, session.begin():
            session.execute(delete(WebSession).where(WebSession.secret_sha256 == _digest(secret)))
