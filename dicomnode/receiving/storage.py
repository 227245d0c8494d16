"""Durable file storage under the data directory.

Received instances are synced before the caller acknowledges anything, in one of two ways:

- default (``sync_directories=False``), for Linux journaling filesystems (ext4, XFS): the file
  is written under its final name and ``fdatasync``-ed. On these filesystems that one call
  commits the journal transaction that also holds the new name and folders, so the instance
  is durable with one sync, as Orthanc does it (measured here: one sync per instance, no
  rename). Concurrent writers of the same instance are serialised by the receiver.
- ``sync_directories=True``: written to a temporary file, ``fdatasync``-ed, renamed into place,
  then every folder that changed is ``fsync``-ed: durable on any POSIX filesystem (network
  filesystems included), at about twice the latency.

A crash in the middle of a write can leave an incomplete file under its final name, but only
for an instance that was never acknowledged: start-up recovery reads every file it re-indexes
and moves damaged ones to ``quarantine/``. Result files are always written atomically.
Paths are built only from validated DICOM UIDs, and every path is checked to stay inside its
root.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from dicomnode.errors import StorageError

log = logging.getLogger(__name__)

UID_MAX_LEN = 64
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")

SPOOL_DIR = "spool"
OUTBOX_DIR = "outbox"
TMP_DIR = "tmp"
QUARANTINE_DIR = "quarantine"


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


def _storage_error(exc: OSError, path: Path) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left writing {path.name}")
    return StorageError(f"cannot write {path.name}: {exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    """The data directory: ``spool/`` for received instances, ``outbox/`` for results."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: bool = True,
        sync_directories: bool = False,
        min_free_mb: int = 0,
    ) -> None:
        self.root = Path(data_dir).resolve()
        self._root_prefix = str(self.root).rstrip("/") + "/"
        self.fsync = fsync
        self.sync_directories = sync_directories
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
        # Validated UIDs hold only digits and single dots, never "/" or "..", so the path cannot
        # leave the spool; the write checks again before it writes.
        return self.root / SPOOL_DIR / parts[0] / parts[1] / f"{parts[2]}.dcm"

    def outbox_dir(self, job_id: int) -> Path:
        path = self.root / OUTBOX_DIR / f"job-{int(job_id):08d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        text = str(path)
        if text.startswith(self._root_prefix) and "/.." not in text:
            return text[len(self._root_prefix):]  # the receiver's own paths, without pathlib
        path = Path(path)
        if path.is_absolute() and path.is_relative_to(self.root):
            return str(path.relative_to(self.root))  # no symlinks to resolve under the root
        return str(path.resolve().relative_to(self.root))

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

    def _prepare(self, path: Path) -> bool:
        """Check the path and free space, create its folder; True if folders must be synced."""
        folder = path.parent
        if folder not in self._known_dirs and not inside(self.root, path):
            raise StorageError(f"refusing to write outside the data directory: {path}")
        self.check_free_space()
        strict = self.fsync and self.sync_directories
        if folder not in self._known_dirs:
            created = [p for p in (folder.parent, folder) if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            if strict:
                for new in created:
                    _fsync_dir(new.parent)
            self._known_dirs.add(folder)
        return strict

    def write_instance(self, path: Path, data: bytes | Sequence[bytes | memoryview]) -> int:
        """The receiver's durable write of one instance (see the module docstring)."""
        chunks = [data] if isinstance(data, bytes) else list(data)
        if self._prepare(path):
            return self.write_atomic(path, chunks)
        try:
            size = self._write_file(path, chunks)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise _storage_error(exc, path) from exc
        return size

    def _write_file(self, path: Path, chunks: Iterable[bytes | memoryview]) -> int:
        """Write ``chunks`` to ``path`` (data synced when ``fsync``); return the byte count."""
        size = 0
        with open(path, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            if self.fsync:
                os.fdatasync(fh.fileno())
        return size

    def write_atomic(self, path: Path, chunks: Iterable[bytes | memoryview]) -> int:
        """Write ``chunks`` to ``path`` atomically and durably; return the byte count."""
        self._prepare(path)
        tmp = self.root / TMP_DIR / f"{uuid.uuid4().hex}.part"
        try:
            size = self._write_file(tmp, chunks)
            os.replace(tmp, path)
            if self.fsync:
                _fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _storage_error(exc, path) from exc
        return size

    def spool_files(self) -> Iterable[Path]:
        return (self.root / SPOOL_DIR).glob("*/*/*.dcm")

    def quarantine(self, path: Path) -> Path:
        """Move a damaged file out of the spool, keeping its name; return the new path."""
        target = self.root / QUARANTINE_DIR / self.relative(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        return target

    def clean_tmp(self) -> int:
        """Remove partial files left by a crash; return how many were removed."""
        removed = 0
        for leftover in (self.root / TMP_DIR).glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d partial file(s) left by an earlier crash", removed)
        return removed
