"""Log lines as text or JSON, each with the id of its HTTP request or DIMSE association."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import warnings
from collections.abc import Iterator

import httpx
import pydicom.valuerep
import pytest
from fastapi import FastAPI
from pydicom import config

from pacs.logs import (
    TEXT_FORMAT,
    ContextFilter,
    JsonFormatter,
    association_id,
    ignore_logged_pydicom_warnings,
    request_id,
)
from viewer_api.observability import RequestObservation


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.StreamHandler[io.StringIO]]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("pacs.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream, handler
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_association_id_and_extras(
    captured: tuple[io.StringIO, object],
) -> None:
    stream, _ = captured
    log = logging.getLogger("pacs.test_logs")
    token = association_id.set("0123456789abcdef")
    try:
        log.info("stored %d instances", 3, extra={"calling_ae": "CT_SCANNER"})
    finally:
        association_id.reset(token)
    log.warning("outside any association")
    first, second = lines(stream)
    assert first["message"] == "stored 3 instances" and first["level"] == "INFO"
    assert (first["association_id"], first["calling_ae"]) == ("0123456789abcdef", "CT_SCANNER")
    assert "association_id" not in second and "request_id" not in second
    assert str(first["time"]).endswith("+00:00")


def test_text_lines_name_the_request() -> None:
    record = logging.makeLogRecord({"name": "pacs", "levelname": "INFO", "msg": "hello"})
    token = request_id.set("abc")
    try:
        ContextFilter().filter(record)
    finally:
        request_id.reset(token)
    assert logging.Formatter(TEXT_FORMAT).format(record).endswith("pacs [request abc]: hello")


def test_every_line_of_a_request_has_its_id(captured: tuple[io.StringIO, object]) -> None:
    stream, _ = captured
    app = FastAPI()

    @app.get("/sync")
    def sync_route() -> dict[str, str]:  # runs in a worker thread
        logging.getLogger("pacs.test_logs").info("in a thread")
        return {}

    @app.get("/async")
    async def async_route() -> dict[str, str]:
        logging.getLogger("pacs.test_logs").info("in the loop")
        return {}

    app.add_middleware(RequestObservation)

    async def call() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            given = await client.get("/sync", headers={"X-Request-ID": "from-the-proxy"})
            made = await client.get("/async", headers={"X-Request-ID": "bad id with space"})
        return given, made

    given, made = asyncio.run(call())
    assert given.headers["x-request-id"] == "from-the-proxy"
    assert made.headers["x-request-id"] != "bad id with space"
    assert len(made.headers["x-request-id"]) == 16
    first, second = lines(stream)
    assert first["request_id"] == "from-the-proxy"
    assert second["request_id"] == made.headers["x-request-id"]


def _warn_about_invalid_uids(first: int, count: int) -> None:
    for i in range(first, first + count):  # each message distinct, as bad data makes them
        pydicom.valuerep.validate_value("UI", f"1.2.{i}.x", config.WARN)


def test_pydicom_warnings_are_logged_but_not_remembered(caplog: pytest.LogCaptureFixture) -> None:
    """A long-running process fed bad data must not keep every distinct pydicom warning
    (found by fuzzing: the server's memory crept with each invalid UID it was sent)."""
    registry = vars(pydicom.valuerep)
    with warnings.catch_warnings(record=True) as issued:
        warnings.resetwarnings()
        warnings.simplefilter("default")  # a process's own filters: pytest's ignore these
        _warn_about_invalid_uids(0, 50)
        assert len(issued) == 50
        assert len(registry["__warningregistry__"]) >= 50  # what the archive held on to
        ignore_logged_pydicom_warnings()
        with caplog.at_level(logging.WARNING, logger="pydicom"):
            _warn_about_invalid_uids(50, 50)
        assert len(issued) == 50
        assert len(registry["__warningregistry__"]) <= 1  # its version key only
    logged = {r.message.split("'")[1] for r in caplog.records if r.name == "pydicom"}
    assert {f"1.2.{i}.x" for i in range(50, 100)} <= logged
