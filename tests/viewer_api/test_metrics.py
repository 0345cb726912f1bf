"""``/metrics`` of a running ``pacs serve`` with two receiver processes: instances counted
across processes, by status; HTTP requests by route template; who may read it; and a real
Prometheus (Debian's) scraping it and answering a query over its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dicom import dicom_files
from tests.servers import DATA, PacsServer, free_port, stop, storescu, wait_for, wait_for_port

METRICS_TOKEN = "scrape-token-0123456789abcdef"
LIDC_0002 = DATA / "ct" / "LIDC-IDRI-0002"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    home = tmp_path_factory.mktemp("metrics") / "home"
    env = {"PACS_RECEIVERS": "2", "PACS_METRICS_TOKEN": METRICS_TOKEN, "PACS_LOG_FORMAT": "json"}
    running = PacsServer(home, env).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def tokens(server: PacsServer) -> dict[str, str]:
    """An admin and a radiologist token (each `pacs token create` is a process start)."""
    return {role: server.token(role) for role in ("admin", "radiologist")}


def samples(server: PacsServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, by name and labels."""
    answer = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert answer.status_code == 200, server.log.read_text()[-3000:]
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def total(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


def log_lines(server: PacsServer) -> list[dict[str, object]]:
    return [
        json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")
    ]


def test_instances_are_counted_across_receiver_processes(server: PacsServer) -> None:
    before = total(samples(server), "pacs_instances_received_total", protocol="dimse")
    files = dicom_files(LIDC_0002)
    sent = 0
    for path in files[:40]:
        storescu(server, path)  # an association per file: either receiver process
        sent += 1
        accepted = {
            line["process"]
            for line in log_lines(server)
            if str(line["message"]).startswith("association from CT_SCANNER")
        }
        if sent >= 4 and len(accepted) == 2:
            break
    assert len(accepted) == 2, "every association went to one receiver process"
    found = samples(server)
    stored = total(found, "pacs_instances_received_total", protocol="dimse", outcome="stored")
    assert stored - before == sent
    assert total(found, "pacs_instances_received_total", status="0x0000") - before == sent
    assert total(found, "pacs_ingest_seconds_count", protocol="dimse") >= sent
    # Every line a receiver wrote for an association carries that association's id.
    lines = [line for line in log_lines(server) if "association from" in str(line["message"])]
    assert lines and all(len(str(line["association_id"])) == 16 for line in lines)


def test_a_refused_instance_is_counted_by_its_status(
    server: PacsServer, tokens: dict[str, str]
) -> None:
    admin = tokens["admin"]
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--b--\r\n"
    answer = httpx.post(
        f"{server.url}/dicom-web/studies",
        content=body,
        headers={
            "Authorization": f"Bearer {admin}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
    )
    assert answer.status_code == 409
    found = samples(server)
    assert total(found, "pacs_instances_received_total", protocol="stow", outcome="refused") == 1
    assert total(found, "pacs_instances_received_total", protocol="stow", status="0xC000") == 1


def test_http_requests_are_counted_by_route_template(
    server: PacsServer, tokens: dict[str, str]
) -> None:
    with httpx.Client(base_url=server.url, headers=bearer(tokens["admin"])) as client:
        assert client.get("/dicom-web/studies/1.2.3.4/series").status_code in (200, 204, 404)
        answer = client.get("/healthz", headers={"X-Request-ID": "probe-42"})
    assert answer.headers["x-request-id"] == "probe-42"
    found = samples(server)
    route = "/dicom-web/studies/{study}/series"
    assert total(found, "pacs_http_requests_total", route=route, method="GET") >= 1
    assert total(found, "pacs_http_request_seconds_count", route=route) >= 1
    assert not any("1.2.3.4" in value for (_, labels) in found for _, value in labels)
    # The queue gauges come from the index at scrape time.
    assert total(found, "pacs_index_up") == 1
    assert ("pacs_webhook_backlog", frozenset()) in found


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_only_an_admin_or_the_metrics_token_reads_metrics(
    server: PacsServer, tokens: dict[str, str]
) -> None:
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    wrong = {"Authorization": "Bearer scrape-token-but-not-this-one"}
    assert httpx.get(f"{server.url}/metrics", headers=wrong).status_code == 401
    url = f"{server.url}/metrics"
    assert httpx.get(url, headers=bearer(tokens["radiologist"])).status_code == 403
    assert httpx.get(url, headers=bearer(tokens["admin"])).status_code == 200


def test_prometheus_scrapes_and_answers(server: PacsServer, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary is not None, "apt-get install prometheus (scripts/install-system-deps.sh)"
    stored = total(samples(server), "pacs_instances_received_total", outcome="stored")
    assert stored > 0
    (tmp_path / "token").write_text(METRICS_TOKEN)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: pacs\n"
        f"    authorization: {{credentials_file: {tmp_path / 'token'}}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server.http_port}']}}]\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=15, process=process)
        query = 'sum(pacs_instances_received_total{outcome="stored"})'

        def scraped() -> float | None:
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}
                ).json()
            except httpx.HTTPError:
                return None
            result = answer["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        started = time.monotonic()
        assert wait_for(scraped, 15, "Prometheus to scrape /metrics") == stored
        assert time.monotonic() - started < 15
        targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets").json()
        assert targets["data"]["activeTargets"][0]["health"] == "up"
    finally:
        stop(process)
