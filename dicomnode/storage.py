"""Durable file storage under the data directory.

Files are written to a temporary name, fsynced, renamed into place and the folder fsynced, so a
file either exists whole or not at all. Paths are built only from validated DICOM UIDs, and
every path is checked to stay inside its root.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from dicomnode.errors import StorageError

log = logging.getLogger(__name__)

UID_MAX_LEN = 64
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")

SPOOL_DIR = "spool"
OUTBOX_DIR = "outbox"
TMP_DIR = "tmp"


class InvalidUIDError(StorageError):
    """A UID is empty, too long or not of the form digits-and-dots (PS3.5 §9.1)."""


class DiskFullError(StorageError):
    """No space left, or free space under the configured reserve."""


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid DICOM UID (PS3.5 §9.1: digits and dots, no leading 0)."""
    return isinstance(value, str) and 0 < len(value) <= UID_MAX_LEN and bool(_UID_RE.match(value))


def check_uid(name: str, value: object) -> str:
    """Return ``value`` if it is a valid UID, else raise InvalidUIDError naming the attribute."""
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidUIDError(f"{name} {shown} is not a valid UID")
    return str(value)


def inside(root: Path, path: Path) -> bool:
    """True if ``path`` resolves to a location under ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    """The data directory: ``spool/`` for received instances, ``outbox/`` for results."""

    def __init__(self, data_dir: Path, *, fsync: bool = True, min_free_mb: int = 0) -> None:
        self.root = Path(data_dir).resolve()
        self.fsync = fsync
        self.min_free_bytes = max(0, min_free_mb) * 1024 * 1024
        for sub in (SPOOL_DIR, OUTBOX_DIR, TMP_DIR):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """spool/<study>/<series>/<sop>.dcm, from validated UIDs only."""
        parts = [
            check_uid("StudyInstanceUID", study_uid),
            check_uid("SeriesInstanceUID", series_uid),
            check_uid("SOPInstanceUID", sop_uid),
        ]
        path = self.root / SPOOL_DIR / parts[0] / parts[1] / f"{parts[2]}.dcm"
        if not inside(self.root / SPOOL_DIR, path):
            raise InvalidUIDError(f"path for {sop_uid!r} escapes the spool directory")
        return path

    def outbox_dir(self, job_id: int) -> Path:
        path = self.root / OUTBOX_DIR / f"job-{int(job_id):08d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    def absolute(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not inside(self.root, path):
            raise StorageError(f"stored path {relative!r} escapes the data directory")
        return path

    def check_free_space(self) -> None:
        if self.min_free_bytes and shutil.disk_usage(self.root).free < self.min_free_bytes:
            raise DiskFullError(
                f"free space under the reserve of {self.min_free_bytes // (1024 * 1024)} MB"
            )

    def write_atomic(self, path: Path, chunks: Iterable[bytes]) -> int:
        """Write ``chunks`` to ``path`` atomically and durably; return the byte count."""
        if not inside(self.root, path):
            raise StorageError(f"refusing to write outside the data directory: {path}")
        self.check_free_space()
        folder = path.parent
        if folder not in self._known_dirs:
            folder.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                _fsync_dir(folder.parent)
            self._known_dirs.add(folder)
        tmp = self.root / TMP_DIR / f"{uuid.uuid4().hex}.part"
        size = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                if self.fsync:
                    os.fdatasync(fh.fileno())
            os.replace(tmp, path)
            if self.fsync:
                _fsync_dir(folder)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"no space left writing {path.name}") from exc
            raise StorageError(f"cannot write {path.name}: {exc}") from exc
        return size

    def spool_files(self) -> Iterable[Path]:
        return (self.root / SPOOL_DIR).glob("*/*/*.dcm")

    def clean_tmp(self) -> int:
        """Remove partial files left by a crash; return how many were removed."""
        removed = 0
        for leftover in (self.root / TMP_DIR).glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d partial file(s) left by an earlier crash", removed)
        return removed
