"""DIMSE status codes the receiver returns (PS3.4 Annex B.2.3, PS3.7 Annex C).

The 0xC2xx codes are within the C-STORE "Error: Cannot understand" range (0xC000-0xCFFF) and
are specific to this node, so a PACS administrator can tell the reasons apart in their logs;
each is always accompanied by an ErrorComment.
"""

from __future__ import annotations

import enum


class StoreStatus(enum.IntEnum):
    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # disk full or under the free-space reserve
    INSTANCE_TOO_LARGE = 0xA701  # data set (inflated, or its decoded pixels) over max_instance_mb
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # SOP Class UID differs from the request's
    CANNOT_UNDERSTAND = 0xC210  # the data set cannot be decoded
    PROCESSING_FAILURE = 0xC211  # unexpected error while storing (same code pynetdicom uses)
    INVALID_SOP_INSTANCE_UID = 0xC220  # missing, malformed, or differs from the request's
    INVALID_STUDY_OR_SERIES_UID = 0xC221  # missing or malformed Study/Series Instance UID
    UID_CONFLICT = 0xC222  # SOP Instance UID already stored with another study/series/content
    CANNOT_RECORD = 0xC230  # file written but the database row could not be committed


# A request refused while it was still arriving (too large, corrupt deflate stream): the status
# and comment ride on the request until the handler answers it.
Refusal = tuple[StoreStatus, str]
REFUSAL_ATTR = "_dicomnode_refusal"


def refusal_of(request: object) -> Refusal | None:
    refusal: Refusal | None = getattr(request, REFUSAL_ATTR, None)
    return refusal
