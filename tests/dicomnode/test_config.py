"""Settings: embedded defaults, the commented file, environment overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import load_settings
from dicomnode.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_need_no_file() -> None:
    s = load_settings(None)
    assert s.node.ae_title == "CHESTCT" and s.node.port == 11112 and s.node.workers == 1
    assert 20 <= s.node.quiet_period_s <= 60
    assert s.database_url.startswith("sqlite:///") and s.destinations == ()


def test_shipped_file_matches_defaults() -> None:
    assert load_settings(REPO / "config" / "node.toml") == load_settings(None)


def test_environment_overrides_file(tmp_path: Path, monkeypatch) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('[node]\nport = 104\nallowed_calling_aets = ["A"]\n'
                   '[[destinations]]\nname = "pacs"\nae_title = "P"\nhost = "h"\nport = 1\n')
    monkeypatch.setenv("DICOMNODE_NODE_PORT", "11113")
    monkeypatch.setenv("DICOMNODE_NODE_ALLOWED_CALLING_AETS", "PACS1, PACS2")
    monkeypatch.setenv("DICOMNODE_NODE_FSYNC", "false")
    s = load_settings(cfg)
    assert s.node.port == 11113
    assert s.node.allowed_calling_aets == ("PACS1", "PACS2")
    assert s.node.fsync is False
    assert s.destinations[0].name == "pacs"
    assert s.destinations[0].objects == ("SEG", "SR", "OVERLAY")
    monkeypatch.setenv("DICOMNODE_DESTINATIONS", "a=AET1@10.0.0.1:104;objects=SEG+SR,b=B@h:11")
    s = load_settings(cfg)
    assert [(d.name, d.ae_title, d.port, d.objects) for d in s.destinations] == [
        ("a", "AET1", 104, ("SEG", "SR")), ("b", "B", 11, ("SEG", "SR", "OVERLAY"))
    ]


@pytest.mark.parametrize(
    "text",
    [
        "[node]\nport = 70000\n",
        "[node]\nae_title = \"THIS-AE-TITLE-IS-TOO-LONG\"\n",
        "[node]\nunknown_key = 1\n",
        "[nodes]\nport = 1\n",
        "[pipeline]\nclassifier = \"resnet\"\n",
        "[[destinations]]\nname = \"x\"\nae_title = \"X\"\nhost = \"h\"\nport = 1\n"
        "objects = [\"PDF\"]\n",
        "[node]\nport = \"abc\"\n",
    ],
)
def test_bad_settings_are_refused_with_a_message(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError):
        load_settings(cfg)
