"""The delivery settings: destination options (STOW-RS, TLS, parallel associations,
confirmation) and [[sources]] tables, with clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import load_settings
from dicomnode.errors import ConfigError

BASE = """
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "10.0.0.5"
port = 104
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load_settings(path)


def test_destination_options_and_sources(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DICOMNODE_DESTINATIONS", raising=False)
    s = load(tmp_path, BASE + """max_associations = 4
tls = true
tls_ca = "/etc/ca.crt"
confirm = "query"

[[destinations]]
name = "web"
ae_title = "-"
host = "pacs"
port = 0
type = "stow"
url = "https://pacs/dicom-web"

[[sources]]
name = "pacs"
ae_title = "PACS"
host = "10.0.0.5"
port = 104
""")
    pacs, web = s.destinations
    assert (pacs.max_associations, pacs.tls, pacs.tls_ca, pacs.confirm) == (
        4, True, Path("/etc/ca.crt"), "query")
    assert (web.type, web.url, web.confirm) == ("stow", "https://pacs/dicom-web", "auto")
    (source,) = s.sources
    assert (source.ae_title, source.port) == ("PACS", 104)


@pytest.mark.parametrize("extra, message", [
    ('type = "stow"\n', "needs url"),
    ('confirm = "maybe"\n', "confirm must be"),
    ("max_associations = 99\n", "1-16"),
    ('tls_cert = "/a.crt"\n', "together"),
    ("colour = 1\n", "unknown key"),
])
def test_bad_destination_options_are_refused(tmp_path, monkeypatch, extra, message) -> None:
    monkeypatch.delenv("DICOMNODE_DESTINATIONS", raising=False)
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, BASE + extra)


def test_bad_source_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="sources"):
        load(tmp_path, '[[sources]]\nname = "x"\nae_title = "X"\nhost = "h"\n')
