"""``dicomnode users add|list|remove`` and ``dicomnode models promote`` on a node's database,
through the real command line entry point."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.cli import main
from dicomnode.db.models import ActiveClassifier, Event
from dicomnode.db.users import UserStore
from dicomnode.review.promotion import active_classifier

from .conftest import NodeState
from .users import add_verdicts


def _config(state: NodeState, tmp_path: Path) -> str:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\ndata_dir = "{state.settings.node.data_dir}"\n')
    return str(path)


def test_users_add_list_remove(fresh_state: NodeState, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(fresh_state, tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    assert main(["users", "add", "rita", "--role", "radiologist", "--password-stdin",
                 "--config", config]) == 0
    store = UserStore(fresh_state.sessions, 60)
    assert store.verify("rita", "a-long-password") is not None
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "add", "otto", "--role", "operator", "--password-stdin",
                 "--config", config]) == 2  # too short: refused with a message
    assert "password" in capsys.readouterr().err
    assert main(["users", "list", "--config", config]) == 0
    assert capsys.readouterr().out.startswith("rita\tradiologist\t")
    assert main(["users", "remove", "rita", "--config", config]) == 0
    assert main(["users", "remove", "rita", "--config", config]) == 1
    assert store.list() == []


def test_promotion_is_gated_by_the_verdicts(fresh_state: NodeState, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(fresh_state, tmp_path)
    when = datetime(2026, 12, 1)
    # The shadow (cnn-bert@2) is wrong twice where the primary was right: worse.
    add_verdicts(fresh_state, [
        ("covid19", "agree", "normal", {}, 0, when),   # truth +: primary TP, shadow FN
        ("normal", "agree", "covid19", {}, 0, when),   # truth -: primary TN, shadow FP
        ("covid19", "disagree", "normal", {}, 0, when),  # truth -: primary FP, shadow TN
    ])
    assert main(["models", "promote", "cnn-bert@2", "--config", config, "--user", "ada"]) == 1
    assert "not promoted" in capsys.readouterr().out
    assert active_classifier(fresh_state.sessions) is None
    assert main(["models", "promote", "decovnet@9", "--config", config, "--user", "ada"]) == 1
    assert "no verdict" in capsys.readouterr().out

    assert main(["models", "promote", "cnn-bert@2", "--force", "--config", config,
                 "--user", "ada"]) == 0
    assert active_classifier(fresh_state.sessions) == "cnn-bert@2"
    with fresh_state.sessions() as s:
        assert s.scalars(select(ActiveClassifier.forced)).one() is True
        audit = list(s.scalars(select(Event.message).where(Event.kind == "action-promote")))
    assert any("refused" in m for m in audit) and any("FORCED" in m for m in audit)
    assert all(m.startswith("ada: ") for m in audit)


def test_a_shadow_at_least_as_good_is_promoted(fresh_state: NodeState, tmp_path: Path) -> None:
    config = _config(fresh_state, tmp_path)
    when = datetime(2026, 12, 1)
    add_verdicts(fresh_state, [
        ("covid19", "agree", "covid19", {}, 0, when),  # both TP
        ("covid19", "disagree", "normal", {}, 0, when),  # primary FP, shadow TN: better
    ])
    assert main(["models", "promote", "cnn-bert@2", "--config", config, "--user", "ada"]) == 0
    assert active_classifier(fresh_state.sessions) == "cnn-bert@2"
    with fresh_state.sessions() as s:
        assert s.scalars(select(ActiveClassifier.forced)).one() is False


def test_command_line_actions_are_audited(fresh_state: NodeState, tmp_path: Path) -> None:
    config = _config(fresh_state, tmp_path)
    assert main(["requeue", str(fresh_state.job_id), "--config", config]) == 0
    assert main(["retry-export", str(fresh_state.export_ids["failed"]), "--config", config]) == 0
    with fresh_state.sessions() as s:
        rows = s.execute(select(Event.kind, Event.message, Event.job_id)
                         .where(Event.kind.like("action-%"))).all()
    assert {kind for kind, _m, _j in rows} == {"action-job-requeue", "action-export-retry"}
    assert all(" (cli): " in message and job == fresh_state.job_id for _k, message, job in rows)
