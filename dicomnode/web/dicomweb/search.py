"""QIDO-RS (PS3.18 §10.6): study, series and instance search over the catalogue, attributes
read from one stored header per item."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydicom import Dataset
from pydicom.tag import BaseTag
from sqlalchemy.orm import Session

from dicomnode.db.queries.catalog import (
    CatalogSeries,
    CatalogStudy,
    StoredObject,
    catalog_instances,
    catalog_series,
    catalog_studies,
)
from dicomnode.web.context import WebContext, dicomweb_base, release
from dicomnode.web.dicomjson import (
    INSTANCE_ATTRIBUTES,
    SERIES_ATTRIBUTES,
    SERIES_EXTRA_ATTRIBUTES,
    STUDY_ATTRIBUTES,
    STUDY_EXTRA_ATTRIBUTES,
    HeaderCache,
    select_attributes,
    to_json,
)
from dicomnode.web.dicomweb.common import DICOM_JSON, CtxDep, SessionDep, check_uids, read_header
from dicomnode.web.qido import QidoQuery, matches, parse_query, split_values


class _Sampled(Protocol):
    """A study, series or instance of the catalogue: described from one of its files."""

    @property
    def sample_path(self) -> str: ...


T = TypeVar("T", bound=_Sampled)

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

router = APIRouter()


def _query(request: Request) -> QidoQuery:
    try:
        return parse_query(list(request.query_params.multi_items()))
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


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
    session: Session,
    query: QidoQuery,
    items: Sequence[T],
    describe: Callable[[T, Dataset], Dataset],
) -> Response:
    """Describe each item from the header of its ``sample_path`` file, keep the matches, page
    the result. The request's session is released first: only files are read here.

    Without filters on header attributes the page is cut first, so only its files are read.
    """
    release(session)
    filtering = _needs_header_filter(query)
    found: list[Dataset] = []
    for item in items if filtering else _slice(items, query):
        header = read_header(ctx.headers, item.sample_path)
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


def _study_attributes(
    study: CatalogStudy, header: Dataset, headers: HeaderCache, query: QidoQuery, base: str
) -> Dataset:
    attrs = Dataset()
    defaults = STUDY_ATTRIBUTES + (STUDY_EXTRA_ATTRIBUTES if query.include_all else ())
    select_attributes(header, _names(defaults, query), attrs)
    modalities = set()
    for series in study.series:
        modality = series.modality
        if not modality:
            sample = read_header(headers, series.sample_path)
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
    studies = catalog_studies(session, _uid_filter(query, 0x0020000D))
    return _search(
        ctx, session, query, studies,
        lambda study, header: _study_attributes(study, header, ctx.headers, query, base),
    )


def _series_attributes(
    series: CatalogSeries, header: Dataset, query: QidoQuery, base: str
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
    listed = catalog_series(session, studies, _uid_filter(query, 0x0020000E))
    return _search(
        ctx, session, query, listed,
        lambda series, header: _series_attributes(series, header, query, base),
    )


@router.get("/studies/{study}/series")
def search_study_series(
    study: str, request: Request, session: SessionDep, ctx: CtxDep
) -> Response:
    """QIDO-RS series search within a study."""
    check_uids(study)
    return _search_series(request, session, ctx, study)


@router.get("/series")
def search_all_series(request: Request, session: SessionDep, ctx: CtxDep) -> Response:
    """QIDO-RS series search over all studies."""
    return _search_series(request, session, ctx, None)


def _instance_attributes(
    obj: StoredObject, header: Dataset, query: QidoQuery, base: str
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
    listed = catalog_instances(session, study, series, _uid_filter(query, 0x00080018))
    return _search(
        ctx, session, query, listed,
        lambda obj, header: _instance_attributes(obj, header, query, base),
    )


@router.get("/studies/{study}/series/{series}/instances")
def search_series_instances(
    study: str, series: str, request: Request, session: SessionDep, ctx: CtxDep
) -> Response:
    """QIDO-RS instance search within a series."""
    check_uids(study, series)
    return _search_instances(request, session, ctx, study, series)


@router.get("/studies/{study}/instances")
def search_study_instances(
    study: str, request: Request, session: SessionDep, ctx: CtxDep
) -> Response:
    """QIDO-RS instance search within a study."""
    check_uids(study)
    return _search_instances(request, session, ctx, study, None)


@router.get("/instances")
def search_all_instances(request: Request, session: SessionDep, ctx: CtxDep) -> Response:
    """QIDO-RS instance search; narrowed by StudyInstanceUID/SeriesInstanceUID filters."""
    return _search_instances(request, session, ctx, None, None)
