"""OHIF served by `pacs serve`: its files at the root, its routes under /viewer, our config.

A small stand-in dist (the shape of @ohif/app's: an index.html with inline scripts and
absolute paths, bundles, a wasm codec, the package's own app-config.js and service worker)
keeps these tests independent of the 200 MB download; tests/e2e runs the real viewer.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import PacsServer
from viewer_api.ohif import DEFAULT_DIST, OhifDist

INLINE = b'console.time("scriptToView"),window.PUBLIC_URL="/"'
INDEX = (
    b"<!doctype html><html><head><script>" + INLINE + b"</script>"
    b'<script src="/app-config.js"></script><script defer src="/app.bundle.0f61.js"></script>'
    b'</head><body><div id="root"></div></body></html>'
)


def _dist(root: Path) -> Path:
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "app.bundle.0f61.js").write_text("window.ohif = true;\n")
    (root / "codec.wasm").write_bytes(b"\0asm\1\0\0\0")
    (root / "assets" / "favicon.ico").write_bytes(b"\0\0\1\0")
    (root / "app-config.js").write_text("window.config = {routerBasename: null};\n")
    (root / "sw.js").write_text("self.addEventListener('fetch', () => {});\n")
    (root / ".fetched").write_text("@ohif/app@3.13.2 sha512-...\n")
    (root.parent / "secret.txt").write_text("outside the dist\n")
    return root


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    base = tmp_path_factory.mktemp("ohif")
    env = {"PACS_OHIF_DIR": str(_dist(base / "dist"))}
    server = PacsServer(base / "home", env).start()
    yield server
    server.stop()


def _config(response: httpx.Response) -> dict[str, Any]:
    body = response.text.strip()
    assert body.startswith("window.config = ") and body.endswith(";")
    return dict(json.loads(body.removeprefix("window.config = ").removesuffix(";")))


@pytest.mark.parametrize(
    "path",
    ["/viewer", "/viewer?StudyInstanceUIDs=1.2.3&token=x", "/viewer/segmentation", "/index.html"],
)
def test_viewer_routes_answer_index_html_without_a_token(viewer: PacsServer, path: str) -> None:
    response = httpx.get(viewer.url + path)
    assert response.status_code == 200
    assert response.content == INDEX
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["referrer-policy"] == "no-referrer"  # the token is in the URL


def test_viewer_policy_admits_exactly_its_own_inline_script(viewer: PacsServer) -> None:
    policy = httpx.get(viewer.url + "/viewer").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    digest = base64.b64encode(hashlib.sha256(INLINE).digest()).decode()
    # No other origin, no other inline script; eval for OHIF's SEG loader (see OhifDist).
    assert directives["script-src"].split() == [
        "'self'",
        f"'sha256-{digest}'",
        "'unsafe-eval'",
        "'wasm-unsafe-eval'",
    ]
    assert "'unsafe-inline'" not in directives["script-src"]
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/app.bundle.0f61.js", "text/javascript"),
        ("/codec.wasm", "application/wasm"),  # streaming compilation needs this exact type
        ("/assets/favicon.ico", "image/"),
        ("/favicon.ico", "image/"),  # browsers ask for it at the root
    ],
)
def test_assets_are_served_from_the_root_without_a_token(
    viewer: PacsServer, path: str, media: str
) -> None:
    response = httpx.get(viewer.url + path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media)
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/sw.js",  # no service worker
        "/.fetched",  # hidden files
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/assets",  # a folder
        "/nothing.js",
        "/assets//favicon.ico",
        "/assets/favicon.ico%00.png",  # NUL: no file name has one (it used to be a 500)
        "/assets/%0afavicon.ico",
    ],
)
def test_only_files_of_the_dist_are_served(viewer: PacsServer, path: str) -> None:
    response = httpx.get(viewer.url + path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "outside the dist" not in response.text


def test_app_config_points_ohif_at_our_dicomweb(viewer: PacsServer) -> None:
    response = httpx.get(viewer.url + "/app-config.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    config = _config(response)  # ours, not the package's own app-config.js
    assert config["routerBasename"] == "/" and config["showStudyList"] is False
    assert config["investigationalUseDialog"] == {"option": "never"}
    [source] = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    settings = source["configuration"]
    assert settings["qidoRoot"] == settings["wadoRoot"] == f"{viewer.url}/dicom-web"
    assert settings["wadoUriRoot"] == f"{viewer.url}/wado"
    assert settings["imageRendering"] == "wadors"
    assert (settings["thumbnailRendering"], settings["thumbnailRequestStrategy"]) == (
        "thumbnail",
        "fetch",
    )
    assert settings["qidoSupportsIncludeField"] is True and settings["enableStudyLazyLoad"]


def test_app_config_follows_the_public_url(tmp_path: Path) -> None:
    env = {
        "PACS_OHIF_DIR": str(_dist(tmp_path / "dist")),
        "PACS_PUBLIC_URL": "https://pacs.example.org/",
    }
    server = PacsServer(tmp_path / "home", env).start()
    try:
        config = _config(httpx.get(server.url + "/app-config.js", headers={"Host": "evil.example"}))
    finally:
        server.stop()
    settings = config["dataSources"][0]["configuration"]
    assert settings["wadoRoot"] == "https://pacs.example.org/dicom-web"


def test_the_api_is_not_shadowed_by_the_catch_all(viewer: PacsServer) -> None:
    assert httpx.get(viewer.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(viewer.url + "/dicom-web/studies").status_code == 401
    unknown = httpx.get(viewer.url + "/api/v1/no-such-thing")
    assert (
        unknown.status_code == 404
        and unknown.json()["detail"] == "no resource at /api/v1/no-such-thing"
    )
    # Allow still lists the API's methods only, and the viewer stays out of the API document.
    put = httpx.put(viewer.url + "/dicom-web/studies")
    assert put.status_code == 405
    assert {m.strip() for m in put.headers["allow"].split(",")} == {"GET", "POST"}
    paths = httpx.get(viewer.url + "/openapi.json").json()["paths"]
    assert not any(p == "/{path}" or p.startswith("/viewer") for p in paths)


def test_without_the_viewer_installed_it_says_how_to_install_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    server = PacsServer(tmp_path / "home", {"PACS_OHIF_DIR": str(tmp_path / "empty")}).start()
    try:
        missing = httpx.get(server.url + "/viewer")
        healthy = httpx.get(server.url + "/healthz")
    finally:
        server.stop()
    assert missing.status_code == 503 and "make install" in missing.json()["detail"]
    assert healthy.status_code == 200


def test_make_install_fetched_the_pinned_viewer() -> None:
    dist = OhifDist.open(DEFAULT_DIST)
    assert dist is not None, "build/ohif is missing: run make install"
    assert (DEFAULT_DIST / ".fetched").read_text().startswith("@ohif/app@3.13.2 sha512-")
    assert b'window.PUBLIC_URL="/"' in dist.index_html  # the layout ohif.py serves
    assert "'sha256-" in dist.content_security_policy
