"""What the DICOMweb routes share: media types, request dependencies, UID checks and the
lookup of stored objects and their headers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.responses import Response
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy.orm import Session

from dicomnode.db.queries.catalog import StoredObject, catalog_instances
from dicomnode.receiving.storage import is_valid_uid
from dicomnode.web.context import WebContext, get_ctx, get_session, release
from dicomnode.web.dicomjson import HeaderCache, transfer_syntax_of
from dicomnode.web.multipart import Part, iter_multipart, multipart_content_type, new_boundary

log = logging.getLogger("dicomnode.web.dicomweb")

DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
APPLICATION_DICOM = "application/dicom"
UNCOMPRESSED = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})

SessionDep = Annotated[Session, Depends(get_session)]
CtxDep = Annotated[WebContext, Depends(get_ctx)]


def check_uids(*uids: str) -> None:
    for uid in uids:
        if not is_valid_uid(uid):
            raise HTTPException(status_code=400, detail=f"{uid[:80]!r} is not a valid UID")


def read_header(headers: HeaderCache, path: str) -> Dataset | None:
    try:
        return headers.header(path)
    except (OSError, InvalidDicomError) as exc:
        log.warning("stored file %s cannot be read: %s", path, exc)
        return None


def stored_objects(
    session: Session, study: str, series: str | None = None, sop: str | None = None
) -> list[StoredObject]:
    uids = [study] + [u for u in (series, sop) if u is not None]
    check_uids(*uids)
    found = catalog_instances(session, study, series, [sop] if sop is not None else None)
    release(session)
    if not found:
        raise HTTPException(status_code=404, detail="no such study, series or instance here")
    return found


def stored_syntax(ctx: WebContext, obj: StoredObject) -> str:
    header = read_header(ctx.headers, obj.path)
    if header is None:
        raise HTTPException(status_code=404, detail=f"stored file of {obj.sop_instance_uid} lost")
    return transfer_syntax_of(header)


def multipart_response(parts: Sequence[Part], part_type: str) -> Response:
    """A multipart/related response of in-memory parts of ``part_type``."""
    boundary = new_boundary()
    body = b"".join(iter_multipart(parts, boundary))
    return Response(body, media_type=multipart_content_type(part_type, boundary))
