"""What an operator meets: `serve` that cannot start, `send` summaries, `send --fix-uids`."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers.studies import COVID_SERIES_DIR

from .conftest import ct_series, free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # each runs the command in a new Python process (~5 s here)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomnode", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _config(tmp_path: Path, port: int, extra: str = "") -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nhost = "127.0.0.1"\nport = {port}\nworkers = 0\n'
                   f'data_dir = "{tmp_path / "data"}"\n{extra}')
    return cfg


def test_busy_port_is_one_line_and_exit_2_before_anything_is_created(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli("serve", "--config", str(_config(tmp_path, port)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dicomnode: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(is another DICOM node running there?)"
    ]
    assert not (tmp_path / "data").exists()


def test_unreadable_certificate_is_one_line_and_exit_2(tmp_path) -> None:
    extra = f'tls_cert = "{tmp_path / "missing.crt"}"\ntls_key = "{tmp_path / "missing.key"}"\n'
    result = _cli("serve", "--config", str(_config(tmp_path, free_port(), extra)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot use the TLS certificate" in lines[0], result.stderr
    assert not (tmp_path / "data").exists()


def test_send_goes_on_after_a_refusal_and_summarises(receiver, tmp_path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    good = ct_series(3)
    good[1].StudyInstanceUID = "896911bf-1143-4c8d-8f04-f3cd1a7f6204"  # a bare UUID: refused
    for i, ds in enumerate(good):
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    (folder / "readme.txt").write_text("not DICOM")
    result = _cli("send", str(folder), "--host", receiver.host, "--port", str(receiver.port),
                  "--aet", receiver.ae_title)
    assert result.returncode == 1
    assert "sent 2, failed 1, not DICOM 1" in result.stdout
    assert "refused with 0xC221: 1" in result.stdout and "--fix-uids" in result.stdout
    assert "Traceback" not in result.stderr


def test_send_to_nobody_is_one_line_without_traceback(tmp_path) -> None:
    ds = ct_series(1)[0]
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    result = _cli("send", str(tmp_path / "one.dcm"), "--port", str(free_port()))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().startswith("dicomnode: CHESTCT@127.0.0.1:")


def test_send_fix_uids_makes_the_real_study_sendable(receiver, sessions) -> None:
    from sqlalchemy import func, select

    from dicomnode.db.models import Instance

    files = sorted(COVID_SERIES_DIR.glob("*.dcm"))[:3]
    args = [*map(str, files), "--host", receiver.host, "--port", str(receiver.port),
            "--aet", receiver.ae_title]
    plain = _cli("send", *args)
    assert plain.returncode == 1 and "sent 0, failed 3" in plain.stdout
    fixed = _cli("send", "--fix-uids", *args)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "sent 3, failed 0" in fixed.stdout
    again = _cli("send", "--fix-uids", *args)  # deterministic: the same three instances
    assert again.returncode == 0
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 3
