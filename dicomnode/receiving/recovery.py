"""Start-up recovery: index spool files whose rows were lost, remove partial files.

Every acknowledged instance was synced into the spool before its success status; its row
follows in the row writer's next group commit, so a crash (``kill -9``) can leave the newest
acknowledged instances without rows, and with SQLite's ``synchronous=NORMAL`` a power loss can
drop the newest commits. Re-indexing the spool makes the database agree with the files again.
A file that does not read back whole (a crash between rename and sync, see
``dicomnode.receiving.storage``) belonged to an instance that was never acknowledged: it is
moved to ``quarantine/`` for an operator to see.
"""

from __future__ import annotations

import logging

from pydicom import dcmread

from dicomnode.db.records import InstanceRecorder
from dicomnode.receiving.headers import instance_record
from dicomnode.receiving.storage import Storage

log = logging.getLogger(__name__)


def reindex_spool(storage: Storage, recorder: InstanceRecorder) -> int:
    """Record every spool file that has no row; return how many were added."""
    known = recorder.known_paths()
    added = 0
    for path in storage.spool_files():
        relative = storage.relative(path)
        if relative in known:
            continue
        try:
            # Whole file, pixels decoded: a crash mid-write leaves it truncated. Only files
            # without rows get here (after a power loss), so the decoding cost is rare.
            ds = dcmread(path)
            if "PixelData" in ds:
                ds.pixel_array  # noqa: B018 - decoding is the check
            # The file must hold the very instance its path names (valid UIDs included).
            named = storage.instance_path(
                str(ds.get("StudyInstanceUID", "")),
                str(ds.get("SeriesInstanceUID", "")),
                str(ds.get("SOPInstanceUID", "")),
            )
            if named != path:
                raise ValueError("its UIDs do not match its path")
        except Exception as exc:  # truncated or corrupt: never acknowledged, so set aside
            quarantined = storage.quarantine(path)
            log.error(
                "spool file %s is incomplete (%s): moved to %s", relative, exc, quarantined
            )
            continue
        record = instance_record(
            ds,
            sop_class_uid=str(ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID"))),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            path=relative,
            size_bytes=path.stat().st_size,
        )
        if recorder.record(record):
            added += 1
    if added:
        log.warning("re-indexed %d spool file(s) whose rows were missing", added)
    return added
