"""Structure-aware fuzzing (Hypothesis) of the code that reads untrusted input, in process:
each may accept or refuse, but only with its own error carrying a reason, never with another
exception (which the HTTP boundary would turn into a 500, the DIMSE one into 0x0110)."""

from __future__ import annotations

import hashlib
import hmac
import mmap
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from pacs.errors import InvalidInstance, QueryError
from pacs.facilities import Scope
from pacs.index import Database, upgrade
from pacs.ingest import Archive, Source
from pacs.instance import ParsedInstance
from pacs.metadata import instance_json
from pacs.part10 import locate, with_meta
from pacs.search import Level, search
from pacs.storage import open_store
from tests.fuzz.strategies import (
    FHIR_NAMES,
    QIDO_NAMES,
    data_sets,
    multipart_bodies,
    query_params,
    token_parts,
    unsigned_token,
)
from viewer_api.auth import TokenVerifier
from viewer_api.dicomjson import accept_ranges, accepts_json, media_type
from viewer_api.fhir import params as fhir_params
from viewer_api.fhir import search as fhir_search
from viewer_api.problems import ApiProblem, BadRequest, Unauthorized
from viewer_api.qido import parse_query
from viewer_api.stow import split_multipart

SECRET = b"s" * 32


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    home = tmp_path_factory.mktemp("parsers")
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    yield Archive(db, open_store(f"file://{home / 'storage'}"))
    db.dispose()


@given(data_sets(), st.booleans())
def test_part10_refuses_only_with_invalid_instance(drawn: tuple[str, bytes], framed: bool) -> None:
    """Part 10 framing, data-set parsing and index attributes: InvalidInstance or a result."""
    syntax, body = drawn
    data = with_meta(body, "1.2.840.10008.5.1.4.1.1.7", "2.25.1", syntax) if framed else body
    try:
        located = locate(data) if framed else locate(data, syntax)
        ParsedInstance.from_dataset(located.read_dataset())
    except InvalidInstance as exc:
        assert str(exc)


@given(data_sets())
def test_store_refuses_only_with_invalid_instance(
    archive: Archive, drawn: tuple[str, bytes]
) -> None:
    """The whole ingest path, as a C-STORE data set: stored (and readable back) or refused."""
    syntax, body = drawn
    try:
        result = archive.store(body, Source("DIMSE", calling_ae="FUZZ"), transfer_syntax_uid=syntax)
    except InvalidInstance as exc:
        assert str(exc)
        return
    blob = archive.blobs.get(result.blob_key)
    assert locate(blob).transfer_syntax_uid == syntax
    assert instance_json(blob, lambda *uids_and_tag: "bulk")  # it can be served (metadata)


@given(multipart_bodies())
def test_stow_multipart_split_is_bounded(drawn: tuple[bytes, str]) -> None:
    """STOW-RS multipart framing: parts lie inside the body, or BadRequest says why."""
    body, boundary = drawn
    try:
        parts = split_multipart(body, boundary)
    except BadRequest as exc:
        assert exc.detail
        return
    for _, start, end in parts:
        assert 0 <= start <= end <= len(body)


@given(multipart_bodies())
def test_stow_multipart_split_of_a_spooled_body(drawn: tuple[bytes, str]) -> None:
    """The same over an mmap, as the route splits a spooled request."""
    body, boundary = drawn
    if not body:
        return
    with mmap.mmap(-1, len(body)) as mapped:
        mapped.write(body)
        mapped.seek(0)  # as the route maps its spool: mmap.find() starts at the position
        try:
            from_map = split_multipart(mapped, boundary)
        except BadRequest:
            from_map = None
    try:
        from_bytes = split_multipart(body, boundary)
    except BadRequest:
        from_bytes = None
    assert from_map == from_bytes


@given(st.text(max_size=200))
def test_media_types_parse_any_header(header: str) -> None:
    """Content-Type and Accept headers (DICOM JSON negotiation) of any text."""
    media, named = media_type(header)
    assert media == media.lower()
    ranked = accept_ranges(header)
    assert all(isinstance(m, str) for m, _ in ranked)
    accepts_json(header)
    del named


@given(query_params(QIDO_NAMES), st.sampled_from([Level.STUDY, Level.SERIES, Level.IMAGE]))
def test_qido_parameters_run_or_refuse(
    archive: Archive, params: list[tuple[str, str]], level: Level
) -> None:
    """QIDO-RS parameters: a query that runs on the index, or a 400 with a reason."""
    try:
        query = parse_query(params, level, {}, Scope.of(["default"]))
        with archive.db.read() as conn:
            list(search(conn, query))
    except BadRequest as exc:
        assert exc.detail
    except QueryError as exc:
        assert str(exc)


@given(query_params(FHIR_NAMES), st.sampled_from(sorted(fhir_search.SEARCHES)))
def test_fhir_parameters_parse_or_refuse(params: list[tuple[str, str]], resource: str) -> None:
    """FHIR search parameters: the checks and value parsers take any text, or 400."""
    query = QueryParams(params)
    try:
        fhir_search.check(resource, query)
        fhir_search.includes(resource, query, "_include")
        fhir_search.includes(resource, query, "_revinclude")
        fhir_search.patient_conditions(query)
        fhir_search.study_conditions(query)
        for name, value in params:
            fhir_params.token(name, value)
            fhir_params.date(name, value)
            fhir_params.reference_id(name, value, "Patient")
        fhir_params.paging(query.get("_count"), query.get("_offset"), query.get("_summary"))
    except BadRequest as exc:
        assert exc.detail


@given(st.text(max_size=300))
def test_jwt_of_any_text_is_unauthorized(token: str) -> None:
    with pytest.raises(Unauthorized):
        TokenVerifier(SECRET).verify(token)


@given(token_parts(), st.booleans())
def test_jwt_claims_of_any_shape(
    parts: tuple[dict[str, object], dict[str, object]], signed: bool
) -> None:
    """Correctly signed tokens with claims of every type: a principal or a 401, nothing else."""
    header, claims = parts
    token = unsigned_token(header, claims, b"sig")
    if signed:
        head, payload, _ = token.split(".")
        mac = hmac.new(SECRET, f"{head}.{payload}".encode(), hashlib.sha256).digest()
        token = unsigned_token(header, claims, mac)
    try:
        TokenVerifier(SECRET).verify(token)
    except ApiProblem as exc:
        assert exc.status == 401 and exc.detail
