"""STOW-RS delivery (DICOMweb) and a QIDO-RS read-back, for destinations of type "stow"."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from dicomnode.config import Destination, ExportSettings
from dicomnode.db.exports import ExportTicket
from dicomnode.delivering.dimse import BatchOutcome

SOP_INSTANCE_UID = "00081155"  # Referenced SOP Instance UID
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
INSTANCE_UID_TAG = "00080018"


def _client(destination: Destination, settings: ExportSettings) -> httpx.Client:
    verify: Any = str(destination.tls_ca) if destination.tls_ca else True
    cert = None
    if destination.tls_cert is not None and destination.tls_key is not None:
        cert = (str(destination.tls_cert), str(destination.tls_key))
    return httpx.Client(timeout=settings.dimse_timeout_s, verify=verify, cert=cert,
                        trust_env=False)


def _multipart(paths: Sequence[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for path in paths:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                   path.read_bytes(), b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(chunks), content_type


def _failures(body: Any) -> dict[str, str]:
    """SOP Instance UID -> failure reason, from a STOW-RS response in DICOM JSON."""
    failed: dict[str, str] = {}
    if not isinstance(body, dict):
        return failed
    for item in body.get(FAILED_SOP_SEQUENCE, {}).get("Value", []) or []:
        uid = (item.get(SOP_INSTANCE_UID, {}).get("Value") or [""])[0]
        reason = (item.get(FAILURE_REASON, {}).get("Value") or [""])[0]
        failed[str(uid)] = f"STOW-RS failure reason {reason}"
    return failed


def stow_batch(
    destination: Destination, settings: ExportSettings, data_dir: Path,
    tickets: Sequence[ExportTicket],
) -> BatchOutcome:
    """POST ``tickets`` in one multipart request to ``{url}/studies``."""
    outcome = BatchOutcome()
    try:
        body, content_type = _multipart([data_dir / t.path for t in tickets])
    except OSError as exc:
        outcome.failed += [(t, None, f"cannot read result file: {exc}") for t in tickets]
        return outcome
    try:
        with _client(destination, settings) as client:
            resp = client.post(f"{destination.url.rstrip('/')}/studies", content=body,
                               headers={"Content-Type": content_type,
                                        "Accept": "application/dicom+json"})
    except httpx.HTTPError as exc:
        outcome.failed += [(t, None, f"STOW-RS request failed: {exc}") for t in tickets]
        return outcome
    if resp.status_code not in (200, 202):
        error = f"STOW-RS HTTP {resp.status_code}: {resp.text[:300]}"
        outcome.failed += [(t, resp.status_code, error) for t in tickets]
        return outcome
    try:
        failed = _failures(resp.json()) if resp.content else {}
    except ValueError:
        failed = {}
    for t in tickets:
        if t.sop_instance_uid in failed:
            outcome.failed.append((t, None, failed[t.sop_instance_uid]))
        else:
            outcome.sent.append((t.export_id, 0))
    return outcome


def qido_instances(
    destination: Destination, settings: ExportSettings, study_uid: str, series_uid: str
) -> set[str]:
    """SOP Instance UIDs the destination holds in a series (QIDO-RS); raises on errors."""
    url = f"{destination.url.rstrip('/')}/studies/{study_uid}/series/{series_uid}/instances"
    with _client(destination, settings) as client:
        resp = client.get(url, headers={"Accept": "application/dicom+json"})
    if resp.status_code == 204 or (resp.status_code == 200 and not resp.content):
        return set()
    resp.raise_for_status()
    return {str((item.get(INSTANCE_UID_TAG, {}).get("Value") or [""])[0])
            for item in resp.json()}
