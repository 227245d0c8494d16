"""DICOMweb over what the node holds: QIDO-RS search and WADO-RS retrieve (PS3.18 §10.4, §10.6)
of received instances and of the node's own result objects (SEG, SR, overlay), so a viewer such
as OHIF shows a CT with its results. Also the small WADO-URI subset OHIF uses for downloads.

Mounted at ``/dicom-web`` when ``[web] dicomweb = "local"``; ``dicomnode.web.proxy`` replaces it
when the node should pass these requests through to the PACS instead.

- ``search``: QIDO-RS (studies, series, instances).
- ``retrieve``: WADO-RS metadata and instances, and WADO-URI.
- ``bulkdata``: WADO-RS frames and bulk data.
- ``common``: media types, the request dependencies and the lookups all three share.
"""

from __future__ import annotations

from fastapi import APIRouter

from dicomnode.web.dicomweb import bulkdata, retrieve, search

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
router.include_router(search.router)
router.include_router(retrieve.router)
router.include_router(bulkdata.router)
wado_uri_router = retrieve.wado_uri_router

__all__ = ["router", "wado_uri_router"]
