"""QIDO-RS and WADO-RS over the node's received instances and result objects."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from tests.dicomnode.conftest import both_backends
from tests.peers.multipart import parse_multipart

from .conftest import NodeState

pytestmark = both_backends

DICOM_ANY = "multipart/related; type=application/dicom; transfer-syntax=*"
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def values(item: dict[str, Any], tag: str) -> list[Any]:
    return item.get(tag, {}).get("Value", [])


def first(item: dict[str, Any], tag: str) -> Any:
    found = values(item, tag)
    return found[0] if found else None


def parts(response: Any) -> list[tuple[dict[str, str], bytes]]:
    assert response.headers["content-type"].startswith("multipart/related")
    # read with the standard library's parser, not the node's own
    return parse_multipart(response.content, response.headers["content-type"])


# --- QIDO-RS --------------------------------------------------------------------------------


def test_study_search_lists_both_studies_with_counts_and_modalities(
    client: TestClient, node_state: NodeState
) -> None:
    response = client.get("/dicom-web/studies")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    by_uid = {first(s, "0020000D"): s for s in response.json()}
    assert set(by_uid) == {node_state.study_a, node_state.study_b}
    a = by_uid[node_state.study_a]
    assert values(a, "00080061") == ["CT", "SEG", "SR"]  # ModalitiesInStudy with the results
    assert first(a, "00201206") == 4  # series: chest, topogram, SEG, SR
    assert first(a, "00201208") == 8 + 2 + 1 + 1
    assert first(a, "00100010") == {"Alphabetic": "Test^Synthetic"}  # PatientName, behind auth
    assert first(a, "00080020") == "20200315"
    assert first(a, "00081190").endswith(f"/dicom-web/studies/{node_state.study_a}")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("PatientID=SYN-002", "b"),
        ("PatientName=*other*", "b"),  # wildcard, case-insensitive
        ("PatientName=test%5Esynthetic", "a"),
        ("AccessionNumber=ACC-A", "a"),
        ("StudyDate=20210101-20211231", "b"),
        ("StudyDate=-20201231", "a"),
        ("ModalitiesInStudy=SEG", "a"),
        ("00081030=CT%20THORAX", "b"),  # a filter named by its tag
    ],
)
def test_study_search_filters(
    client: TestClient, node_state: NodeState, query: str, expected: str
) -> None:
    found = [first(s, "0020000D") for s in client.get(f"/dicom-web/studies?{query}").json()]
    assert found == [node_state.study_a if expected == "a" else node_state.study_b]


def test_study_uid_list_matching_limit_and_offset(
    client: TestClient, node_state: NodeState
) -> None:
    both = f"{node_state.study_a}\\{node_state.study_b}"
    found = client.get("/dicom-web/studies", params={"StudyInstanceUID": both}).json()
    assert {first(s, "0020000D") for s in found} == {node_state.study_a, node_state.study_b}
    only_a = client.get("/dicom-web/studies", params={"StudyInstanceUID": node_state.study_a})
    assert [first(s, "0020000D") for s in only_a.json()] == [node_state.study_a]
    page1 = client.get("/dicom-web/studies?limit=1").json()
    page2 = client.get("/dicom-web/studies?limit=1&offset=1").json()
    assert len(page1) == len(page2) == 1
    assert first(page1[0], "0020000D") != first(page2[0], "0020000D")
    assert client.get("/dicom-web/studies?PatientID=NOBODY").json() == []
    assert client.get("/dicom-web/studies?limit=-1").status_code == 400


def test_includefield_adds_attributes(client: TestClient, node_state: NodeState) -> None:
    plain = client.get("/dicom-web/studies", params={"StudyInstanceUID": node_state.study_a})
    assert "00080060" not in plain.json()[0]
    # OHIF's study list asks for these by tag, comma-separated.
    asked = client.get(
        "/dicom-web/studies",
        params={"StudyInstanceUID": node_state.study_a, "includefield": "00081030,00080060"},
    ).json()[0]
    assert first(asked, "00080060") == "CT"
    everything = client.get(
        "/dicom-web/studies",
        params={"StudyInstanceUID": node_state.study_a, "includefield": "all"},
    ).json()[0]
    assert first(everything, "00100040") == "O"


def test_series_search_includes_result_series(client: TestClient, node_state: NodeState) -> None:
    response = client.get(f"/dicom-web/studies/{node_state.study_a}/series")
    series = {first(s, "0020000E"): s for s in response.json()}
    assert set(series) == {
        node_state.chest_series, node_state.scout_series, node_state.seg_series,
        node_state.sr_series,
    }
    assert first(series[node_state.chest_series], "00080060") == "CT"
    assert first(series[node_state.chest_series], "00201209") == 8
    assert first(series[node_state.chest_series], "0008103E") == "CHEST"
    assert first(series[node_state.seg_series], "00080060") == "SEG"
    assert first(series[node_state.sr_series], "00080060") == "SR"
    assert first(series[node_state.sr_series], "00200011") == 101
    only_seg = client.get(f"/dicom-web/studies/{node_state.study_a}/series?Modality=SEG").json()
    assert [first(s, "0020000E") for s in only_seg] == [node_state.seg_series]
    everywhere = client.get(f"/dicom-web/series?SeriesInstanceUID={node_state.series_b}").json()
    assert [first(s, "0020000D") for s in everywhere] == [node_state.study_b]


def test_instance_search(client: TestClient, node_state: NodeState) -> None:
    url = f"/dicom-web/studies/{node_state.study_a}/series/{node_state.chest_series}/instances"
    found = client.get(url).json()
    assert [first(i, "00200013") for i in found] == list(range(1, 9))
    assert {first(i, "00080018") for i in found} == {ds.SOPInstanceUID for ds in node_state.chest}
    assert first(found[0], "00280010") == 16  # Rows
    one = client.get(url, params={"SOPInstanceUID": node_state.chest[3].SOPInstanceUID}).json()
    assert [first(i, "00200013") for i in one] == [4]
    seg = client.get(
        f"/dicom-web/studies/{node_state.study_a}/series/{node_state.seg_series}/instances"
    ).json()
    assert [first(i, "00080018") for i in seg] == [node_state.seg_uid]
    assert first(seg[0], "00280008") == 8  # NumberOfFrames of the SEG


def test_bad_uid_and_unknown_study(client: TestClient) -> None:
    assert client.get("/dicom-web/studies/not-a-uid/series").status_code == 400
    assert client.get("/dicom-web/studies/1.2.3.4/series").json() == []
    assert client.get("/dicom-web/studies/1.2.3.4/metadata").status_code == 404


# --- WADO-RS metadata and bulk data ---------------------------------------------------------


def test_series_metadata_has_every_instance_and_bulk_data_uris(
    client: TestClient, node_state: NodeState
) -> None:
    url = f"/dicom-web/studies/{node_state.study_a}/series/{node_state.chest_series}/metadata"
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    items = response.json()
    assert len(items) == 8
    item = next(i for i in items if first(i, "00080018") == node_state.chest[0].SOPInstanceUID)
    assert values(item, "00280030") == [0.7, 0.7]  # PixelSpacing
    assert values(item, "00083002") == [ExplicitVRLittleEndian]
    pixel = item["7FE00010"]
    assert pixel["vr"] == "OW" and "Value" not in pixel
    bulk = client.get(
        pixel["BulkDataURI"],
        headers={"Accept": "multipart/related; type=application/octet-stream"},
    )
    assert bulk.status_code == 200
    [(headers, payload)] = parts(bulk)
    assert headers["content-type"].startswith("application/octet-stream")
    assert payload == node_state.native_pixels[node_state.chest[0].SOPInstanceUID]
    single = client.get(pixel["BulkDataURI"], headers={"Accept": "application/octet-stream"})
    assert single.content == payload


def test_study_metadata_includes_the_seg_and_sr(client: TestClient, node_state: NodeState) -> None:
    items = client.get(f"/dicom-web/studies/{node_state.study_a}/metadata").json()
    assert len(items) == 12
    sr = next(i for i in items if first(i, "00080018") == node_state.sr_uid)
    assert first(sr, "00080060") == "SR"
    content = values(sr, "0040A730")  # ContentSequence, inline
    assert first(content[0], "0040A160") == "synthetic finding"
    seg = next(i for i in items if first(i, "00080018") == node_state.seg_uid)
    assert seg["7FE00010"]["vr"] == "OB"  # BitsAllocated 1


# --- WADO-RS instances ----------------------------------------------------------------------


def test_instance_bytes_equal_the_stored_file(client: TestClient, node_state: NodeState) -> None:
    ds = node_state.chest[2]
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}" \
          f"/instances/{ds.SOPInstanceUID}"
    for accept in (DICOM_ANY, 'multipart/related; type="application/dicom"'):
        response = client.get(url, headers={"Accept": accept})
        assert response.status_code == 200
        [(headers, payload)] = parts(response)
        assert headers["content-type"] == \
            f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
        assert payload == node_state.path_of(ds.SOPInstanceUID).read_bytes()


def test_result_objects_and_series_retrieve(client: TestClient, node_state: NodeState) -> None:
    seg = client.get(
        f"/dicom-web/studies/{node_state.study_a}/series/{node_state.seg_series}"
        f"/instances/{node_state.seg_uid}",
        headers={"Accept": DICOM_ANY},
    )
    [(_, payload)] = parts(seg)
    assert payload == node_state.result_path("SEG").read_bytes()
    series = client.get(
        f"/dicom-web/studies/{node_state.study_a}/series/{node_state.chest_series}",
        headers={"Accept": DICOM_ANY},
    )
    payloads = [p for _, p in parts(series)]
    assert len(payloads) == 8
    assert {dcmread(io.BytesIO(p)).SOPInstanceUID for p in payloads} == \
        {ds.SOPInstanceUID for ds in node_state.chest}


def test_compressed_instance_transcoded_on_request(
    client: TestClient, node_state: NodeState
) -> None:
    ds = node_state.series_b_datasets[0]
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}" \
          f"/instances/{ds.SOPInstanceUID}"
    stored = client.get(url, headers={"Accept": DICOM_ANY})
    [(headers, payload)] = parts(stored)
    assert headers["content-type"].endswith(f"transfer-syntax={RLELossless}")
    explicit = client.get(url, headers={
        "Accept": f"multipart/related; type=application/dicom; "
                  f"transfer-syntax={ExplicitVRLittleEndian}",
    })
    [(headers, payload)] = parts(explicit)
    decoded = dcmread(io.BytesIO(payload))
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert decoded.SOPInstanceUID == ds.SOPInstanceUID
    assert decoded.PixelData == node_state.native_pixels[ds.SOPInstanceUID]
    baseline = "1.2.840.10008.1.2.4.50"
    jpeg = client.get(url, headers={
        "Accept": f"multipart/related; type=application/dicom; transfer-syntax={baseline}"
    })
    assert jpeg.status_code == 406


# --- WADO-RS frames -------------------------------------------------------------------------


def test_frames_of_an_uncompressed_instance(client: TestClient, node_state: NodeState) -> None:
    ds = node_state.chest[5]
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}" \
          f"/instances/{ds.SOPInstanceUID}/frames/1"
    for accept in (OHIF_FRAMES, "multipart/related; type=application/octet-stream", None):
        response = client.get(url, headers={"Accept": accept} if accept else {})
        assert response.status_code == 200, accept
        [(headers, payload)] = parts(response)
        assert headers["content-type"] == \
            f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
        assert payload == node_state.native_pixels[ds.SOPInstanceUID]
    # The exact layout Cornerstone's loader parses: boundary line first, "Content-Type:".
    body = client.get(url, headers={"Accept": OHIF_FRAMES}).content
    assert body.startswith(b"--") and b"\r\nContent-Type: application/octet-stream" in body
    assert client.get(url.replace("/frames/1", "/frames/2")).status_code == 404


def test_frames_of_a_compressed_instance(client: TestClient, node_state: NodeState) -> None:
    ds = node_state.series_b_datasets[2]
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}" \
          f"/instances/{ds.SOPInstanceUID}/frames/1"
    native = client.get(url, headers={"Accept": OHIF_FRAMES})
    [(headers, payload)] = parts(native)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={RLELossless}"
    stored = dcmread(node_state.path_of(ds.SOPInstanceUID))
    assert payload == next(generate_frames(stored.PixelData, number_of_frames=1))
    uncompressed = {"Accept": "multipart/related; type=application/octet-stream"}
    decoded = client.get(url, headers=uncompressed)
    [(headers, payload)] = parts(decoded)
    assert headers["content-type"].endswith(f"transfer-syntax={ExplicitVRLittleEndian}")
    assert payload == node_state.native_pixels[ds.SOPInstanceUID]
    rle = client.get(url, headers={"Accept": "multipart/related; type=image/dicom-rle"})
    [(_, payload)] = parts(rle)
    assert payload == next(generate_frames(stored.PixelData, number_of_frames=1))
    assert client.get(url, headers={"Accept": "multipart/related; type=image/jp2"}).status_code \
        == 406


def test_frames_of_the_binary_seg(client: TestClient, node_state: NodeState) -> None:
    seg = dcmread(node_state.result_path("SEG"))
    mask = seg.pixel_array  # frames, rows, columns
    url = f"/dicom-web/studies/{node_state.study_a}/series/{node_state.seg_series}" \
          f"/instances/{node_state.seg_uid}/frames/2,3"
    got = parts(client.get(url, headers={"Accept": OHIF_FRAMES}))
    assert len(got) == 2
    for (_, payload), index in zip(got, (1, 2), strict=True):
        unpacked = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")
        assert np.array_equal(unpacked[: mask[index].size].reshape(mask[index].shape), mask[index])


def test_wado_uri_returns_the_file(client: TestClient, node_state: NodeState) -> None:
    ds = node_state.scout[0]
    response = client.get("/wado", params={
        "requestType": "WADO", "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID, "objectUID": ds.SOPInstanceUID,
        "contentType": "application/dicom", "transferSyntax": "*",
    })
    assert response.status_code == 200
    assert response.content == node_state.path_of(ds.SOPInstanceUID).read_bytes()
