"""DICOMweb over what the node holds: QIDO-RS search and WADO-RS retrieve (PS3.18 §10.4, §10.6)
of received instances and of the node's own result objects (SEG, SR, overlay), so a viewer such
as OHIF shows a CT with its results. Also the small WADO-URI subset OHIF uses for downloads.

Mounted at ``/dicom-web`` when ``[web] dicomweb = "local"``; ``dicomnode.web.proxy`` replaces it
when the node should pass these requests through to the PACS instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy.orm import Session

from dicomnode.db import webqueries as wq
from dicomnode.receiving.storage import is_valid_uid
from dicomnode.web.context import WebContext, dicomweb_base, get_ctx, get_session, release
from dicomnode.web.dicomjson import (
    INSTANCE_ATTRIBUTES,
    SERIES_ATTRIBUTES,
    SERIES_EXTRA_ATTRIBUTES,
    STUDY_ATTRIBUTES,
    STUDY_EXTRA_ATTRIBUTES,
    HeaderCache,
    select_attributes,
    to_json,
    transfer_syntax_of,
)
from dicomnode.web.frames import FrameError, explicit_little_endian, read_bulk, read_frames
from dicomnode.web.multipart import (
    MediaRange,
    Part,
    iter_multipart,
    multipart_content_type,
    new_boundary,
    parse_accept,
)
from dicomnode.web.qido import QidoQuery, matches, parse_query, split_values

log = logging.getLogger(__name__)
T = TypeVar("T")

DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
APPLICATION_DICOM = "application/dicom"
UNCOMPRESSED = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
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
INSTANCE_EXTRA_ATTRIBUTES = (
    "ImageType", "AcquisitionNumber", "ContentDate", "ContentTime", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SliceLocation",
    "FrameOfReferenceUID", "SamplesPerPixel", "PhotometricInterpretation", "BitsStored",
    "HighBit", "PixelRepresentation", "WindowCenter", "WindowWidth", "RescaleIntercept",
    "RescaleSlope", "RescaleType", "ConceptNameCodeSequence", "CompletionFlag",
    "VerificationFlag", "SegmentSequence", "ReferencedSeriesSequence",
)
# Filters on these are answered by the database, before any file is read.
_DB_FILTERS = frozenset({0x0020000D, 0x0020000E, 0x00080018})

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
wado_uri_router = APIRouter(tags=["dicomweb"])

SessionDep = Annotated[Session, Depends(get_session)]
CtxDep = Annotated[WebContext, Depends(get_ctx)]


def _check_uids(*uids: str) -> None:
    for uid in uids:
        if not is_valid_uid(uid):
            raise HTTPException(status_code=400, detail=f"{uid[:80]!r} is not a valid UID")


def _query(request: Request) -> QidoQuery:
    try:
        return parse_query(list(request.query_params.multi_items()))
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


def _header(headers: HeaderCache, path: str) -> Dataset | None:
    try:
        return headers.header(path)
    except (OSError, InvalidDicomError) as exc:
        log.warning("stored file %s cannot be read: %s", path, exc)
        return None


def _json_response(items: Sequence[Dataset], query: QidoQuery) -> Response:
    headers = {}
    if query.ignored:
        names = ", ".join(sorted(set(query.ignored)))[:200]
        headers["Warning"] = f'299 dicomnode "query keys not supported and ignored: {names}"'
    body = json.dumps([to_json(ds) for ds in items], separators=(",", ":"))
    return Response(body, media_type=DICOM_JSON, headers=headers)


def _slice(items: Sequence[T], query: QidoQuery) -> Sequence[T]:
    end = None if query.limit is None else query.offset + query.limit
    return items[query.offset:end]


def _needs_header_filter(query: QidoQuery) -> bool:
    return any(tag not in _DB_FILTERS for tag, value in query.filters if value not in ("", "*"))


def _search(
    ctx: WebContext,
    query: QidoQuery,
    items: Sequence[T],
    sample_path: Callable[[T], str],
    describe: Callable[[T, Dataset], Dataset],
) -> Response:
    """Describe each item from one of its files' headers, keep the matches, page the result.

    Without filters on header attributes the page is cut first, so only its files are read.
    """
    filtering = _needs_header_filter(query)
    found: list[Dataset] = []
    for item in items if filtering else _slice(items, query):
        header = _header(ctx.headers, sample_path(item))
        if header is None:
            continue
        attrs = describe(item, header)
        if matches(attrs, query.filters):
            found.append(attrs)
    return _json_response(_slice(found, query) if filtering else found, query)


def _names(defaults: Sequence[str], query: QidoQuery) -> list[str | BaseTag]:
    """The attributes to copy: the level's defaults, includefields and filtered ones."""
    return [*defaults, *query.include, *(tag for tag, _ in query.filters)]


def _uid_filter(query: QidoQuery, tag: int) -> list[str] | None:
    value = query.filter_value(tag)
    return split_values(value) if value not in (None, "", "*") else None


# ---------------------------------------------------------------------------------------------
# QIDO-RS


def _study_attributes(
    study: wq.CatalogStudy, header: Dataset, headers: HeaderCache, query: QidoQuery, base: str
) -> Dataset:
    attrs = Dataset()
    defaults = STUDY_ATTRIBUTES + (STUDY_EXTRA_ATTRIBUTES if query.include_all else ())
    select_attributes(header, _names(defaults, query), attrs)
    modalities = set()
    for series in study.series:
        modality = series.modality
        if not modality:
            sample = _header(headers, series.sample_path)
            modality = str(sample.get("Modality", "")) if sample is not None else ""
        if modality:
            modalities.add(modality)
    attrs.StudyInstanceUID = study.study_instance_uid
    attrs.ModalitiesInStudy = sorted(modalities)
    attrs.NumberOfStudyRelatedSeries = len(study.series)
    attrs.NumberOfStudyRelatedInstances = study.instance_count
    attrs.InstanceAvailability = "ONLINE"
    attrs.RetrieveURL = f"{base}/studies/{study.study_instance_uid}"
    return attrs


@router.get("/studies")
def search_studies(request: Request, session: SessionDep, ctx: CtxDep) -> Response:
    """QIDO-RS study search, most recently received first."""
    query = _query(request)
    base = dicomweb_base(request)
    studies = wq.catalog_studies(session, _uid_filter(query, 0x0020000D))
    release(session)
    return _search(
        ctx, query, studies, lambda study: study.sample_path,
        lambda study, header: _study_attributes(study, header, ctx.headers, query, base),
    )


def _series_attributes(
    series: wq.CatalogSeries, header: Dataset, query: QidoQuery, base: str
) -> Dataset:
    attrs = Dataset()
    extra = SERIES_EXTRA_ATTRIBUTES + STUDY_ATTRIBUTES if query.include_all else ()
    select_attributes(header, _names(SERIES_ATTRIBUTES + extra, query), attrs)
    attrs.StudyInstanceUID = series.study_instance_uid
    attrs.SeriesInstanceUID = series.series_instance_uid
    if not attrs.get("Modality") and series.modality:
        attrs.Modality = series.modality
    attrs.NumberOfSeriesRelatedInstances = series.instance_count
    attrs.InstanceAvailability = "ONLINE"
    attrs.RetrieveURL = (
        f"{base}/studies/{series.study_instance_uid}/series/{series.series_instance_uid}"
    )
    return attrs


def _search_series(
    request: Request, session: Session, ctx: WebContext, study: str | None
) -> Response:
    query = _query(request)
    base = dicomweb_base(request)
    studies = [study] if study is not None else _uid_filter(query, 0x0020000D)
    listed = wq.catalog_series(session, studies, _uid_filter(query, 0x0020000E))
    release(session)
    return _search(
        ctx, query, listed, lambda series: series.sample_path,
        lambda series, header: _series_attributes(series, header, query, base),
    )


@router.get("/studies/{study}/series")
def search_study_series(
    study: str, request: Request, session: SessionDep, ctx: CtxDep
) -> Response:
    """QIDO-RS series search within a study."""
    _check_uids(study)
    return _search_series(request, session, ctx, study)


@router.get("/series")
def search_all_series(request: Request, session: SessionDep, ctx: CtxDep) -> Response:
    """QIDO-RS series search over all studies."""
    return _search_series(request, session, ctx, None)


def _instance_attributes(
    obj: wq.StoredObject, header: Dataset, query: QidoQuery, base: str
) -> Dataset:
    attrs = Dataset()
    extra = (
        INSTANCE_EXTRA_ATTRIBUTES + SERIES_ATTRIBUTES + STUDY_ATTRIBUTES
        if query.include_all else ()
    )
    select_attributes(header, _names(INSTANCE_ATTRIBUTES + extra, query), attrs)
    attrs.StudyInstanceUID = obj.study_instance_uid
    attrs.SeriesInstanceUID = obj.series_instance_uid
    attrs.SOPInstanceUID = obj.sop_instance_uid
    attrs.SOPClassUID = obj.sop_class_uid
    attrs.InstanceAvailability = "ONLINE"
    attrs.RetrieveURL = (
        f"{base}/studies/{obj.study_instance_uid}/series/{obj.series_instance_uid}"
        f"/instances/{obj.sop_instance_uid}"
    )
    return attrs


def _search_instances(
    request: Request, session: Session, ctx: WebContext, study: str | None, series: str | None
) -> Response:
    query = _query(request)
    base = dicomweb_base(request)
    if study is None:
        study_uids = _uid_filter(query, 0x0020000D)
        if study_uids is not None and len(study_uids) != 1:
            raise HTTPException(400, "search instances of one StudyInstanceUID at a time")
        study = study_uids[0] if study_uids else None
    if series is None:
        series_uids = _uid_filter(query, 0x0020000E)
        if series_uids is not None and len(series_uids) != 1:
            raise HTTPException(400, "search instances of one SeriesInstanceUID at a time")
        series = series_uids[0] if series_uids else None
    listed = wq.catalog_instances(session, study, series, _uid_filter(query, 0x00080018))
    release(session)
    return _search(
        ctx, query, listed, lambda obj: obj.path,
        lambda obj, header: _instance_attributes(obj, header, query, base),
    )


@router.get("/studies/{study}/series/{series}/instances")
def search_series_instances(
    study: str, series: str, request: Request, session: SessionDep, ctx: CtxDep
) -> Response:
    """QIDO-RS instance search within a series."""
    _check_uids(study, series)
    return _search_instances(request, session, ctx, study, series)


@router.get("/studies/{study}/instances")
def search_study_instances(
    study: str, request: Request, session: SessionDep, ctx: CtxDep
) -> Response:
    """QIDO-RS instance search within a study."""
    _check_uids(study)
    return _search_instances(request, session, ctx, study, None)


@router.get("/instances")
def search_all_instances(request: Request, session: SessionDep, ctx: CtxDep) -> Response:
    """QIDO-RS instance search; narrowed by StudyInstanceUID/SeriesInstanceUID filters."""
    return _search_instances(request, session, ctx, None, None)


# ---------------------------------------------------------------------------------------------
# WADO-RS metadata


def _objects(
    session: Session, study: str, series: str | None = None, sop: str | None = None
) -> list[wq.StoredObject]:
    uids = [study] + [u for u in (series, sop) if u is not None]
    _check_uids(*uids)
    found = wq.catalog_instances(session, study, series, [sop] if sop is not None else None)
    release(session)
    if not found:
        raise HTTPException(status_code=404, detail="no such study, series or instance here")
    return found


def _bulk_base(base: str, obj: wq.StoredObject) -> str:
    return (
        f"{base}/studies/{obj.study_instance_uid}/series/{obj.series_instance_uid}"
        f"/instances/{obj.sop_instance_uid}/bulk"
    )


def _metadata_response(
    request: Request, ctx: WebContext, objects: Sequence[wq.StoredObject]
) -> Response:
    base = dicomweb_base(request)
    items = []
    for obj in objects:
        try:
            items.append(ctx.headers.metadata(obj.path, _bulk_base(base, obj)))
        except (OSError, InvalidDicomError) as exc:
            log.warning("stored file %s cannot be read: %s", obj.path, exc)
    if not items:
        raise HTTPException(status_code=404, detail="the stored files cannot be read")
    return Response(b"[" + b",".join(items) + b"]", media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata")
def study_metadata(study: str, request: Request, session: SessionDep, ctx: CtxDep) -> Response:
    return _metadata_response(request, ctx, _objects(session, study))


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(
    study: str, series: str, request: Request, session: SessionDep, ctx: CtxDep
) -> Response:
    return _metadata_response(request, ctx, _objects(session, study, series))


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
def instance_metadata(
    study: str, series: str, sop: str, request: Request, session: SessionDep, ctx: CtxDep
) -> Response:
    return _metadata_response(request, ctx, _objects(session, study, series, sop))


# ---------------------------------------------------------------------------------------------
# WADO-RS instances


def _stored_syntax(ctx: WebContext, obj: wq.StoredObject) -> str:
    header = _header(ctx.headers, obj.path)
    if header is None:
        raise HTTPException(status_code=404, detail=f"stored file of {obj.sop_instance_uid} lost")
    return transfer_syntax_of(header)


def _choose_dicom_syntax(
    ranges: Sequence[MediaRange], stored: set[str]
) -> tuple[str, bool] | None:
    """(wanted transfer syntax or "" for as stored, multipart?) for the first acceptable range.

    Without a transfer-syntax parameter the files are sent as stored: the node never
    transcodes unless asked to (PS3.18 would default to Explicit VR Little Endian).
    """
    for r in ranges:
        if r.media_type in ("*/*", "multipart/*"):
            return "", True
        if r.media_type == APPLICATION_DICOM:
            wanted, multipart = r.transfer_syntax, False
        elif r.is_multipart and r.part_type in ("", APPLICATION_DICOM, "*/*"):
            wanted, multipart = r.transfer_syntax, True
        else:
            continue
        if wanted in (None, "*") or stored == {wanted}:
            return "", multipart
        if wanted == ExplicitVRLittleEndian:
            return ExplicitVRLittleEndian, multipart
    return None


def _dicom_parts(
    ctx: WebContext, objects: Sequence[wq.StoredObject], syntax: str, base: str
) -> Iterator[Part]:
    for obj in objects:
        path = ctx.storage.absolute(obj.path)
        location = (
            f"{base}/studies/{obj.study_instance_uid}/series/{obj.series_instance_uid}"
            f"/instances/{obj.sop_instance_uid}"
        )
        stored = _stored_syntax(ctx, obj)
        if not syntax or syntax == stored:
            ctype = f"{APPLICATION_DICOM}; transfer-syntax={stored}"
            yield Part(ctype, path=path, location=location)
        else:
            ctype = f"{APPLICATION_DICOM}; transfer-syntax={syntax}"
            yield Part(ctype, data=explicit_little_endian(path), location=location)


def _retrieve(request: Request, ctx: WebContext, objects: Sequence[wq.StoredObject]) -> Response:
    stored = {_stored_syntax(ctx, obj) for obj in objects}
    choice = _choose_dicom_syntax(parse_accept(request.headers.get("accept")), stored)
    if choice is None:
        raise HTTPException(
            status_code=406,
            detail="acceptable: multipart/related; type=application/dicom "
            "(transfer-syntax * or as stored, or 1.2.840.10008.1.2.1)",
        )
    syntax, multipart = choice
    base = dicomweb_base(request)
    if not multipart:
        if len(objects) != 1:
            raise HTTPException(406, "a single-part response holds one instance: ask multipart")
        part = next(_dicom_parts(ctx, objects, syntax, base))
        if part.path is not None:
            return FileResponse(part.path, media_type=part.content_type)
        return Response(part.data, media_type=part.content_type)
    boundary = new_boundary()
    return StreamingResponse(
        iter_multipart(_dicom_parts(ctx, objects, syntax, base), boundary),
        media_type=multipart_content_type(APPLICATION_DICOM, boundary),
    )


@router.get("/studies/{study}")
def retrieve_study(study: str, request: Request, session: SessionDep, ctx: CtxDep) -> Response:
    return _retrieve(request, ctx, _objects(session, study))


@router.get("/studies/{study}/series/{series}")
def retrieve_series(
    study: str, series: str, request: Request, session: SessionDep, ctx: CtxDep
) -> Response:
    return _retrieve(request, ctx, _objects(session, study, series))


@router.get("/studies/{study}/series/{series}/instances/{sop}")
def retrieve_instance(
    study: str, series: str, sop: str, request: Request, session: SessionDep, ctx: CtxDep
) -> Response:
    return _retrieve(request, ctx, _objects(session, study, series, sop))


# ---------------------------------------------------------------------------------------------
# WADO-RS frames and bulk data


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
    obj = _objects(session, study, series, sop)[0]
    numbers = _frame_numbers(frames)
    stored = _stored_syntax(ctx, obj)
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
    boundary = new_boundary()
    body = b"".join(iter_multipart(parts, boundary))
    return Response(body, media_type=multipart_content_type(OCTET_STREAM, boundary))


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
    obj = _objects(session, study, series, sop)[0]
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
    boundary = new_boundary()
    body = b"".join(iter_multipart([Part(ctype, data=value)], boundary))
    return Response(body, media_type=multipart_content_type(OCTET_STREAM, boundary))


# ---------------------------------------------------------------------------------------------
# WADO-URI (PS3.18 §9): the instance as a file, which OHIF uses to download


@wado_uri_router.get("/wado")
def wado_uri(request: Request, session: SessionDep, ctx: CtxDep) -> Response:
    params = request.query_params
    if params.get("requestType") != "WADO":
        raise HTTPException(status_code=400, detail="requestType=WADO is required")
    study, series, sop = (params.get(k, "") for k in ("studyUID", "seriesUID", "objectUID"))
    content_type = params.get("contentType", APPLICATION_DICOM)
    if content_type != APPLICATION_DICOM:
        raise HTTPException(status_code=406, detail="only contentType=application/dicom")
    obj = _objects(session, study, series, sop)[0]
    wanted = params.get("transferSyntax", "*")
    path = ctx.storage.absolute(obj.path)
    if wanted in ("*", _stored_syntax(ctx, obj)):
        return FileResponse(path, media_type=APPLICATION_DICOM)
    if wanted == ExplicitVRLittleEndian:
        return Response(explicit_little_endian(path), media_type=APPLICATION_DICOM)
    raise HTTPException(status_code=406, detail=f"transferSyntax {wanted[:64]} not available")
