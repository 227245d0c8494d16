"""WADO-RS frames and bulk data (PS3.18 §10.4): pixel frames in the stored encoding when the
client accepts it, else native; the value of one binary element named by a BulkDataURI."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from dicomnode.web.dicomweb.common import (
    OCTET_STREAM,
    UNCOMPRESSED,
    CtxDep,
    SessionDep,
    multipart_response,
    stored_objects,
    stored_syntax,
)
from dicomnode.web.frames import FrameError, read_bulk, read_frames
from dicomnode.web.multipart import MediaRange, Part, parse_accept

# PS3.18 table 8.7.3-5: media types of compressed frames.
IMAGE_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}

router = APIRouter()


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.replace("%2C", ",").split(",") if n.strip()]
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=f"bad frame list {text[:80]!r}") from exc
    if not numbers:
        raise HTTPException(status_code=400, detail="no frame numbers")
    return numbers


def _choose_frame_encoding(ranges: Sequence[MediaRange], stored: str) -> tuple[bool, bool] | None:
    """(keep the stored encoding?, multipart?) for the first acceptable range, or None."""
    image_type = IMAGE_MEDIA_TYPES.get(stored, "")
    for r in ranges:
        if r.media_type in ("*/*", "multipart/*"):
            return False, True
        multipart = r.is_multipart
        part_type = r.part_type or OCTET_STREAM
        wanted = r.transfer_syntax
        if part_type in (OCTET_STREAM, "*/*"):
            if wanted == "*" or (wanted is not None and wanted == stored):
                return True, multipart
            if wanted is None or wanted in UNCOMPRESSED:
                return False, multipart
        elif image_type and part_type == image_type and wanted in (None, "*", stored):
            return True, multipart
    return None


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}")
def retrieve_frames(
    study: str,
    series: str,
    sop: str,
    frames: str,
    request: Request,
    session: SessionDep,
    ctx: CtxDep,
) -> Response:
    """WADO-RS frames: stored encoding when the client accepts it, else native pixels."""
    obj = stored_objects(session, study, series, sop)[0]
    numbers = _frame_numbers(frames)
    stored = stored_syntax(ctx, obj)
    choice = _choose_frame_encoding(parse_accept(request.headers.get("accept")), stored)
    if choice is None:
        raise HTTPException(
            status_code=406,
            detail="acceptable: multipart/related; type=application/octet-stream "
            f"(transfer-syntax * or 1.2.840.10008.1.2.1), or the stored {stored}",
        )
    keep, multipart = choice
    try:
        found = read_frames(ctx.storage.absolute(obj.path), numbers, keep_encoding=keep)
    except FrameError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except OSError as exc:
        raise HTTPException(status_code=404, detail="stored file cannot be read") from exc
    if not multipart:
        if len(found) != 1:
            raise HTTPException(406, "a single-part response holds one frame: ask multipart")
        frame = found[0]
        return Response(
            frame.data, media_type=f"{OCTET_STREAM}; transfer-syntax={frame.transfer_syntax_uid}"
        )
    parts = [
        Part(f"{OCTET_STREAM}; transfer-syntax={f.transfer_syntax_uid}", data=f.data)
        for f in found
    ]
    return multipart_response(parts, OCTET_STREAM)


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulk/{tag}")
def retrieve_bulk(
    study: str,
    series: str,
    sop: str,
    tag: str,
    request: Request,
    session: SessionDep,
    ctx: CtxDep,
) -> Response:
    """The value of one binary element named by a BulkDataURI of the metadata."""
    obj = stored_objects(session, study, series, sop)[0]
    try:
        tag_value = int(tag, 16)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail="bulk data tag must be 8 hex digits") from exc
    try:
        value, syntax = read_bulk(ctx.storage.absolute(obj.path), tag_value)
    except KeyError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except OSError as exc:
        raise HTTPException(status_code=404, detail="stored file cannot be read") from exc
    ctype = OCTET_STREAM
    if tag_value == 0x7FE00010 and syntax not in UNCOMPRESSED:
        ctype += f"; transfer-syntax={syntax}"
    ranges = parse_accept(request.headers.get("accept"))
    if ranges and ranges[0].media_type == OCTET_STREAM:
        return Response(value, media_type=ctype)
    return multipart_response([Part(ctype, data=value)], OCTET_STREAM)
