"""``dicomnode users add|list|remove`` and ``dicomnode models promote``: appended to the
``dicomnode`` command by :func:`add_commands`."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from dicomnode.config import load_settings
from dicomnode.db.users import ROLES, UserStore
from dicomnode.errors import DicomNodeError

WithConfig = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def _sessions(args: argparse.Namespace) -> Any:
    from dicomnode.db.engine import open_database

    settings = load_settings(args.config)
    if not settings.node.database_url:  # the SQLite file in the data directory
        settings.node.data_dir.mkdir(parents=True, exist_ok=True)
    return open_database(settings.database_url)[1]


def _store(args: argparse.Namespace) -> UserStore:
    return UserStore(_sessions(args), session_lifetime_s=0)


def cmd_users_add(args: argparse.Namespace) -> int:
    if not args.password_stdin:
        raise DicomNodeError("give the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\r\n")
    _store(args).add(args.name, args.role, password)
    print(f"user {args.name} added ({args.role})")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    for user in _store(args).list():
        print(f"{user.name}\t{user.role}\t{user.created_at:%Y-%m-%d %H:%M:%S}Z")
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    if not _store(args).remove(args.name):
        print(f"dicomnode: no user {args.name!r}", file=sys.stderr)
        return 1
    print(f"user {args.name} removed (their sessions ended)")
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    from dicomnode.review.promotion import promote

    decision = promote(_sessions(args), args.model, by=args.user or getpass.getuser(),
                       force=args.force)
    print(decision.explanation)
    return 0 if decision.promoted else 1


def audit_cli_action(sessions: Any, action: str, message: str, *, job_id: int | None = None,
                     export_id: int | None = None) -> None:
    """An action taken on the command line, in the audit trail under the login name."""
    from dicomnode.db.audit import record_action

    record_action(sessions, f"{getpass.getuser()} (cli)", action, message, job_id=job_id,
                  export_id=export_id)


def add_commands(sub: Any, with_config: WithConfig) -> None:
    """Append the ``users`` and ``models`` command groups to the ``dicomnode`` parser."""
    users = sub.add_parser("users", help="web users (with [web] auth = 'users')")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    p = with_config(users_sub.add_parser("add", help="add a user"))
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    p.set_defaults(func=cmd_users_add)
    p = with_config(users_sub.add_parser("list", help="list users and roles"))
    p.set_defaults(func=cmd_users_list)
    p = with_config(users_sub.add_parser("remove", help="remove a user, end their sessions"))
    p.add_argument("name")
    p.set_defaults(func=cmd_users_remove)

    models = sub.add_parser("models", help="the classifier the worker runs")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    p = with_config(models_sub.add_parser(
        "promote", help="make a shadow classifier primary when the verdicts support it"))
    p.add_argument("model", metavar="NAME@VERSION")
    p.add_argument("--force", action="store_true",
                   help="promote even when it is not at least as good (recorded in the audit)")
    p.add_argument("--user", help="name recorded in the audit trail (default: login name)")
    p.set_defaults(func=cmd_models_promote)
