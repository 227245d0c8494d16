"""WADO-RS metadata and instances (PS3.18 §10.4), and WADO-URI (PS3.18 §9): the instance as a
file, which OHIF uses to download."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.db.queries.catalog import StoredObject
from dicomnode.web.context import WebContext, dicomweb_base
from dicomnode.web.dicomweb.common import (
    APPLICATION_DICOM,
    DICOM_JSON,
    CtxDep,
    SessionDep,
    log,
    stored_objects,
    stored_syntax,
)
from dicomnode.web.frames import explicit_little_endian
from dicomnode.web.multipart import (
    MediaRange,
    Part,
    iter_multipart,
    multipart_content_type,
    new_boundary,
    parse_accept,
)

router = APIRouter()
wado_uri_router = APIRouter(tags=["dicomweb"])


Respond = Callable[[Request, WebContext, Sequence[StoredObject]], Response]


def _add_level_routes(suffix: str, respond: Respond, names: tuple[str, str, str]) -> None:
    """GET routes for the study, series and instance levels of one WADO-RS resource (the
    ``suffix`` after the level's path, e.g. "/metadata"); each answers ``respond`` with the
    stored objects at that level. ``names`` are the routes' (and OpenAPI operations') names."""

    def study_level(study: str, request: Request, session: SessionDep, ctx: CtxDep) -> Response:
        return respond(request, ctx, stored_objects(session, study))

    def series_level(
        study: str, series: str, request: Request, session: SessionDep, ctx: CtxDep
    ) -> Response:
        return respond(request, ctx, stored_objects(session, study, series))

    def instance_level(
        study: str, series: str, sop: str, request: Request, session: SessionDep, ctx: CtxDep
    ) -> Response:
        return respond(request, ctx, stored_objects(session, study, series, sop))

    paths = ("/studies/{study}", "/studies/{study}/series/{series}",
             "/studies/{study}/series/{series}/instances/{sop}")
    endpoints: tuple[Callable[..., Response], ...] = (study_level, series_level, instance_level)
    for path, endpoint, name in zip(paths, endpoints, names, strict=True):
        router.add_api_route(path + suffix, endpoint, methods=["GET"], name=name)


def _bulk_base(base: str, obj: StoredObject) -> str:
    return (
        f"{base}/studies/{obj.study_instance_uid}/series/{obj.series_instance_uid}"
        f"/instances/{obj.sop_instance_uid}/bulk"
    )


def _metadata_response(
    request: Request, ctx: WebContext, objects: Sequence[StoredObject]
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


_add_level_routes(
    "/metadata", _metadata_response, ("study_metadata", "series_metadata", "instance_metadata")
)


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
    ctx: WebContext, objects: Sequence[StoredObject], syntax: str, base: str
) -> Iterator[Part]:
    for obj in objects:
        path = ctx.storage.absolute(obj.path)
        location = (
            f"{base}/studies/{obj.study_instance_uid}/series/{obj.series_instance_uid}"
            f"/instances/{obj.sop_instance_uid}"
        )
        stored = stored_syntax(ctx, obj)
        if not syntax or syntax == stored:
            ctype = f"{APPLICATION_DICOM}; transfer-syntax={stored}"
            yield Part(ctype, path=path, location=location)
        else:
            ctype = f"{APPLICATION_DICOM}; transfer-syntax={syntax}"
            yield Part(ctype, data=explicit_little_endian(path), location=location)


def _retrieve(request: Request, ctx: WebContext, objects: Sequence[StoredObject]) -> Response:
    stored = {stored_syntax(ctx, obj) for obj in objects}
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


_add_level_routes("", _retrieve, ("retrieve_study", "retrieve_series", "retrieve_instance"))


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
    obj = stored_objects(session, study, series, sop)[0]
    wanted = params.get("transferSyntax", "*")
    path = ctx.storage.absolute(obj.path)
    if wanted in ("*", stored_syntax(ctx, obj)):
        return FileResponse(path, media_type=APPLICATION_DICOM)
    if wanted == ExplicitVRLittleEndian:
        return Response(explicit_little_endian(path), media_type=APPLICATION_DICOM)
    raise HTTPException(status_code=406, detail=f"transferSyntax {wanted[:64]} not available")
