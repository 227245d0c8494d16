"""The proxy mode against a real PACS: Orthanc with its DICOMweb plug-in on loopback."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dicomnode.web.app import create_app
from tests.peers.multipart import parse_multipart
from tests.peers.orthanc import DICOMWEB_ROOT, OrthancPeer

from .conftest import NodeState, make_client


@pytest.mark.integration
def test_viewer_requests_reach_orthanc_through_the_node(
    node_state: NodeState, orthanc: OrthancPeer
) -> None:
    chest = node_state.chest[:3]
    orthanc.upload([node_state.path_of(ds.SOPInstanceUID) for ds in chest])
    upstream = f"{orthanc.base_url}{DICOMWEB_ROOT.rstrip('/')}"
    web = replace(node_state.settings.web, dicomweb="proxy", pacs_dicomweb_url=upstream)
    settings = replace(node_state.settings, web=web)
    with make_client(node_state, create_app(settings, node_state.sessions,
                                            node_state.storage)) as client:
        studies = client.get("/dicom-web/studies", params={"PatientID": "SYN-001"}).json()
        assert [s["0020000D"]["Value"][0] for s in studies] == [node_state.study_a]
        series = f"/dicom-web/studies/{node_state.study_a}/series/{node_state.chest_series}"
        metadata = client.get(f"{series}/metadata").json()
        assert len(metadata) == 3
        uris = [m["7FE00010"]["BulkDataURI"] for m in metadata if "7FE00010" in m]
        assert uris and all(u.startswith("http://127.0.0.1:8080/dicom-web/") for u in uris)
        ds = chest[1]
        frames = client.get(
            f"{series}/instances/{ds.SOPInstanceUID}/frames/1",
            headers={"Accept": "multipart/related; type=application/octet-stream; "
                              "transfer-syntax=*"},
        )
        assert frames.status_code == 200
        [(_, payload)] = parse_multipart(frames.content, frames.headers["content-type"])
        assert payload == node_state.native_pixels[ds.SOPInstanceUID]
