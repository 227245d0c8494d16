"""Deterministic DICOM UIDs for result objects and repaired inputs.

Every UID a job writes is derived from the job's ``uid_root`` and a few names (for example
``derive_uid(root, "seg", "series")``), so running a job again writes the very same objects
and a PACS that already holds them sees duplicates, not new results. Derived UIDs use the
``2.25`` arc (DICOM PS3.5 §B.2): the decimal form of a name-based (version 5) UUID.

Note: ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` ignores its entropy and
returns a random UUID-based UID, which is why this module builds the UUID itself.
"""

from __future__ import annotations

import json
import re
import uuid

# Namespace of every name-based UUID this project derives; changing it changes every UID.
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:chest-ct-dicomnode:result-uids")
UID_MAX_LENGTH = 64
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a syntactically valid DICOM UID (PS3.5 §9.1)."""
    if not isinstance(value, str):
        return False
    return 0 < len(value) <= UID_MAX_LENGTH and _UID_RE.match(value) is not None


def uid_from_uuid(value: uuid.UUID) -> str:
    """The ``2.25.<integer>`` UID that ISO/IEC 9834-8 assigns to a UUID."""
    return f"2.25.{value.int}"


def new_uid_root() -> str:
    """A fresh random root for one job: a valid UID itself, stored with the job."""
    return uid_from_uuid(uuid.uuid4())


def derive_uid(uid_root: str, *names: object) -> str:
    """Derive a UID deterministically from ``uid_root`` and ``names``.

    The same arguments always give the same UID; different arguments give different UIDs
    (name-based UUID over an unambiguous JSON encoding of the arguments).
    """
    if not uid_root:
        raise ValueError("uid_root must be a non-empty string")
    key = json.dumps([uid_root, *[str(name) for name in names]], separators=(",", ":"))
    return uid_from_uuid(uuid.uuid5(UID_NAMESPACE, key))


def uuid_string_to_uid(value: str) -> str | None:
    """Map a bare UUID string (a common export defect) to its ``2.25`` UID, else None."""
    try:
        parsed = uuid.UUID(value.strip())
    except (ValueError, AttributeError):
        return None
    return uid_from_uuid(parsed)
