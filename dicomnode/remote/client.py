"""HTTP side of a remote task performer: UPS-RS worklist calls, WADO-RS retrieve, STOW-RS store.

Plain DICOMweb (PS3.18 §10, §11) with a bearer token, so the same client works against the node
and against any other UPS-RS provider. Series are streamed to files (``MultipartReader``), never
held whole in memory. Errors carry the HTTP status and the server's ``Warning``, never data.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from pydicom import Dataset

from dicomnode.web.multipart import MultipartError, MultipartReader, boundary_of

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
TRANSACTION_HEADER = "Transaction-UID"
MAX_SERIES_BYTES = 8 * 1024**3
MAX_SERIES_PARTS = 20_000
STOW_BATCH_BYTES = 64 * 1024**2


class RemoteError(RuntimeError):
    """A DICOMweb call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _fail(what: str, response: httpx.Response) -> RemoteError:
    warning = response.headers.get("warning", "")
    detail = f": {warning[:300]}" if warning else ""
    return RemoteError(f"{what}: HTTP {response.status_code}{detail}", response.status_code)


def _datasets(response: httpx.Response) -> list[Dataset]:
    if response.status_code == 204 or not response.content:
        return []
    raw = response.json()
    items = raw if isinstance(raw, list) else [raw]
    return [Dataset.from_json(item) for item in items]


class _File:
    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh

    def write(self, data: bytes) -> None:
        self._fh.write(data)

    def close(self) -> None:
        self._fh.close()


class DicomwebClient:
    """One provider's UPS-RS root (``.../dicom-web``) and where results are stored (STOW-RS)."""

    def __init__(
        self,
        ups_base: str,
        token: str = "",
        *,
        stow_base: str | None = None,
        timeout_s: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.ups_base = ups_base.rstrip("/")
        self.stow_base = (stow_base or ups_base).rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = http or httpx.Client(timeout=timeout_s, trust_env=False)
        self._http.headers.update(headers)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"{method} {url.split('?')[0]}: {type(exc).__name__}") from exc

    # ------------------------------------------------------------------ UPS-RS
    def scheduled(self, limit: int = 10) -> list[Dataset]:
        response = self._call(
            "GET", f"{self.ups_base}/workitems",
            params={"ProcedureStepState": "SCHEDULED", "limit": str(limit)},
            headers={"Accept": DICOM_JSON},
        )
        if response.status_code not in (200, 204):
            raise _fail("search workitems", response)
        return _datasets(response)

    def retrieve(self, uid: str) -> Dataset:
        response = self._call("GET", f"{self.ups_base}/workitems/{uid}",
                              headers={"Accept": DICOM_JSON})
        if response.status_code != 200:
            raise _fail("retrieve workitem", response)
        items = _datasets(response)
        if len(items) != 1:
            raise RemoteError("retrieve workitem: expected one data set")
        return items[0]

    def change_state(self, uid: str, transaction_uid: str, state: str) -> None:
        """PUT .../state; raises RemoteError (status 409 when refused for the state)."""
        ds = Dataset()
        ds.ProcedureStepState = state
        ds.TransactionUID = transaction_uid
        response = self._call(
            "PUT", f"{self.ups_base}/workitems/{uid}/state",
            content=json.dumps(ds.to_json_dict()), headers={"Content-Type": DICOM_JSON},
        )
        if response.status_code != 200:
            raise _fail(f"change workitem state to {state}", response)

    def update(self, uid: str, transaction_uid: str, ds: Dataset) -> None:
        response = self._call(
            "POST", f"{self.ups_base}/workitems/{uid}",
            params={"transaction": transaction_uid},
            content=json.dumps(ds.to_json_dict()), headers={"Content-Type": DICOM_JSON},
        )
        if response.status_code != 200:
            raise _fail("update workitem", response)

    # ------------------------------------------------------------------ WADO-RS
    def retrieve_series(self, url: str, out_dir: Path) -> list[Path]:
        """Every instance of the series at ``url`` as a file in ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []
        with ExitStack() as stack:
            def open_part(_headers: dict[str, str]) -> _File:
                path = out_dir / f"{len(files) + 1:05d}.dcm"
                files.append(path)
                return _File(stack.enter_context(open(path, "wb")))

            try:
                with self._http.stream("GET", url, headers={"Accept": ACCEPT_DICOM}) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        raise _fail("retrieve series", resp)
                    reader = MultipartReader(
                        boundary_of(resp.headers.get("content-type", "")), open_part,
                        max_parts=MAX_SERIES_PARTS, max_bytes=MAX_SERIES_BYTES,
                    )
                    for chunk in resp.iter_bytes():
                        reader.feed(chunk)
                    reader.finish()
            except httpx.HTTPError as exc:
                raise RemoteError(f"retrieve series: {type(exc).__name__}") from exc
            except MultipartError as exc:
                raise RemoteError(f"retrieve series: {exc}") from exc
        if not files:
            raise RemoteError("retrieve series: no instances")
        return files

    # ------------------------------------------------------------------ STOW-RS
    def store(self, study_uid: str, files: Sequence[Path], transaction_uid: str) -> int:
        """STOW-RS the files (in batches); returns how many were stored."""
        stored = 0
        for batch in _batches(files):
            boundary = uuid.uuid4().hex
            response = self._call(
                "POST", f"{self.stow_base}/studies/{study_uid}",
                content=_stow_body(batch, boundary),
                headers={
                    "Content-Type":
                        f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": DICOM_JSON,
                    TRANSACTION_HEADER: transaction_uid,
                },
            )
            if response.status_code != 200:
                raise _fail("store results", response)
            stored += len(batch)
        return stored


def _batches(files: Sequence[Path]) -> Iterator[list[Path]]:
    batch: list[Path] = []
    size = 0
    for path in files:
        length = path.stat().st_size
        if batch and size + length > STOW_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += length
    if batch:
        yield batch


def _stow_body(files: Sequence[Path], boundary: str) -> Iterator[bytes]:
    for path in files:
        yield (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode("ascii")
        yield path.read_bytes()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")
