"""Read-back: ask a destination which instances of a series it holds (C-FIND or QIDO-RS)."""

from __future__ import annotations

from pydicom import Dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore

from dicomnode.config import Destination, ExportSettings
from dicomnode.delivering.dimse import associate, next_message_id
from dicomnode.delivering.stow import qido_instances

FIND_PENDING = frozenset({0xFF00, 0xFF01})
MAX_ANSWERS = 100_000


class ReadBackError(Exception):
    """The destination could not be asked."""


def held_instances(
    destination: Destination, settings: ExportSettings, calling_ae_title: str,
    study_uid: str, series_uid: str,
) -> set[str]:
    """SOP Instance UIDs of ``series_uid`` that the destination reports holding."""
    if destination.type == "stow":
        try:
            return qido_instances(destination, settings, study_uid, series_uid)
        except Exception as exc:  # noqa: BLE001 - any HTTP or JSON error: not confirmed
            raise ReadBackError(f"QIDO-RS failed: {exc}") from exc
    return find_instances(destination, settings, calling_ae_title, study_uid, series_uid)


def find_instances(
    destination: Destination, settings: ExportSettings, calling_ae_title: str,
    study_uid: str, series_uid: str,
) -> set[str]:
    """C-FIND at IMAGE level (Study Root) for the SOP Instance UIDs of one series."""
    model = StudyRootQueryRetrieveInformationModelFind
    try:
        assoc = associate(destination, settings, calling_ae_title,
                          [(model, "1.2.840.10008.1.2.1"), (model, "1.2.840.10008.1.2")])
    except OSError as exc:
        raise ReadBackError(f"cannot associate: {exc}") from exc
    if not assoc.is_established:
        raise ReadBackError("association for C-FIND not established")
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    query.SOPInstanceUID = ""
    held: set[str] = set()
    try:
        for status, identifier in assoc.send_c_find(query, model, msg_id=next_message_id()):
            code = getattr(status, "Status", None)
            if code is None:
                raise ReadBackError("C-FIND: no response")
            if int(code) in FIND_PENDING and identifier is not None:
                held.add(str(getattr(identifier, "SOPInstanceUID", "")))
                if len(held) > MAX_ANSWERS:
                    raise ReadBackError("C-FIND: too many answers")
            elif int(code) != 0x0000:
                raise ReadBackError(f"C-FIND answered 0x{int(code):04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return held
