"""The OHIF viewer at /: files, the index.html fallback, the generated app-config.js."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicomnode.web.app import create_app
from dicomnode.web.ohif import app_config_js

from .conftest import NodeState, make_client

INDEX = "<!doctype html><html><head><script src=\"/app-config.js\"></script></head>" \
        "<body>fake viewer</body></html>"


@pytest.fixture()
def viewer(node_state: NodeState, tmp_path: Path) -> TestClient:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / "app-config.js").write_text("window.config = {demo: 'https://public.example'};")
    (dist / "app.bundle.123.js").write_text("console.log('bundle');")
    (dist / "codec.wasm").write_bytes(b"\0asm\1\0\0\0")
    (dist / "assets" / "logo.svg").write_text("<svg/>")
    (tmp_path / "secret.txt").write_text("outside the viewer")
    settings = replace(node_state.settings,
                       web=replace(node_state.settings.web, ohif_dir=dist))
    return make_client(node_state, create_app(settings, node_state.sessions, node_state.storage))


def test_index_and_fallback_for_viewer_routes(viewer: TestClient) -> None:
    for path in ("/", "/viewer?StudyInstanceUIDs=1.2.3", "/segmentation", "/local/x"):
        response = viewer.get(path)
        assert response.status_code == 200, path
        assert response.text == INDEX
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["cache-control"] == "no-cache"


def test_files_with_their_types(viewer: TestClient) -> None:
    bundle = viewer.get("/app.bundle.123.js")
    assert bundle.text == "console.log('bundle');"
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert viewer.get("/codec.wasm").headers["content-type"] == "application/wasm"
    assert viewer.get("/assets/logo.svg").headers["content-type"].startswith("image/svg+xml")
    assert viewer.get("/missing.bundle.js").status_code == 404  # no index.html for an asset
    assert viewer.get("/..%2Fsecret.txt").status_code == 404
    assert viewer.get("/assets/..%2F..%2Fsecret.txt").status_code == 404


def test_generated_app_config_points_at_this_origin(viewer: TestClient) -> None:
    response = viewer.get("/app-config.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "public.example" not in response.text
    body = response.text
    config = json.loads(body[body.index("window.config = ") + 16:body.rstrip().rindex(";")])
    [source] = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert config["defaultDataSourceName"] == source["sourceName"]
    c = source["configuration"]
    assert (c["qidoRoot"], c["wadoRoot"]) == ("/dicom-web", "/dicom-web")
    assert c["qidoSupportsIncludeField"] is True
    assert (c["imageRendering"], c["thumbnailRendering"]) == ("wadors", "wadors")
    assert c["supportsWildcard"] is True and c["omitQuotationForMultipartRequest"] is True
    assert c["bulkDataURI"] == {"enabled": True}
    assert config["investigationalUseDialog"] == {"option": "never"}
    assert config["showStudyList"] is True
    assert body == app_config_js()


def test_node_routes_are_not_shadowed(viewer: TestClient) -> None:
    assert "<h1>Dashboard</h1>" in viewer.get("/node/").text
    assert viewer.get("/api/nope").status_code == 404
    assert viewer.get("/api/nope").headers["content-type"] == "application/json"
    assert viewer.get("/dicom-web/studies").headers["content-type"].startswith(
        "application/dicom+json")


def test_viewer_needs_login_like_everything_else(node_state: NodeState, viewer: TestClient) -> None:
    anonymous = TestClient(viewer.app)
    assert anonymous.get("/viewer", headers={"Accept": "text/html"},
                         follow_redirects=False).status_code == 303
    assert anonymous.get("/app-config.js").status_code == 401
