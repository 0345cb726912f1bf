"""What an association costs to set up: every association shares the server's presentation
contexts (no per-association deep copy) and still accepts the transfer syntax its own requestor
proposed first; pynetdicom's log handlers are bound only when their lines show, and pydicom
does not validate each value it reads for a warning."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator
from typing import Any, cast

import pytest
from pydicom import config as pydicom_config
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, evt
from pynetdicom._handlers import standard_pdu_recv_handler
from pynetdicom._validators import validate_ui
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from pacs.dimse import scu
from pacs.dimse.scu import quiet_diagnostics
from pacs.dimse.server import Listener, make_servers
from pacs.ingest import Archive
from tests.servers import free_port


@pytest.fixture
def server(embedded_archive: Archive) -> Iterator[tuple[object, int]]:
    port = free_port()
    [served] = make_servers(embedded_archive, "127.0.0.1", [Listener(port)], "PACS")
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served, port
    served.shutdown()
    thread.join(10)


def accepted_syntax(port: int, proposed: list[str]) -> str:
    ae = AE("CONTEXTS")
    assoc = ae.associate("127.0.0.1", port, [build_context(CTImageStorage, proposed)], "PACS")
    assert assoc.is_established
    [context] = assoc.accepted_contexts
    assoc.release()
    return str(context.transfer_syntax[0])


def ct_syntaxes(served: object) -> list[str]:
    contexts = served.contexts  # type: ignore[attr-defined]
    [ct] = [c for c in contexts if c.abstract_syntax == CTImageStorage]
    return [str(ts) for ts in ct.transfer_syntax]


def test_each_association_gets_its_requestors_order_and_the_shared_list_stays(
    server: tuple[object, int],
) -> None:
    served, port = server
    before = ct_syntaxes(served)
    explicit_first = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]
    assert accepted_syntax(port, explicit_first) == ExplicitVRLittleEndian
    assert accepted_syntax(port, explicit_first[::-1]) == ImplicitVRLittleEndian
    assert accepted_syntax(port, explicit_first) == ExplicitVRLittleEndian
    assert ct_syntaxes(served) == before  # reordered copies, never the server's own contexts


def test_associations_are_not_given_a_deep_copy(server: tuple[object, int]) -> None:
    """pynetdicom deep-copies the server's contexts for every association (~50 ms of CPU for
    ours); the server hands over the same context objects instead."""
    served, _ = server
    contexts = served.contexts  # type: ignore[attr-defined]
    handed = copy.deepcopy(contexts)
    assert len(handed) == len(contexts) > 100
    assert all(a is b for a, b in zip(handed, contexts, strict=True))


@pytest.mark.parametrize(("level", "bound"), [(logging.WARNING, False), (logging.INFO, True)])
def test_pynetdicoms_log_handlers_are_bound_only_when_their_lines_show(
    level: int, bound: bool
) -> None:
    """pynetdicom formats every association's contexts for INFO lines: only when they show."""
    logger = logging.getLogger("pynetdicom")
    saved = logger.level
    logger.setLevel(level)
    try:
        quiet_diagnostics()
        assoc = Association(AE("HANDLERS"), "requestor")
        bound_now = cast(list[tuple[Any, Any]], assoc.get_handlers(evt.EVT_PDU_RECV))
        handlers = [handler for handler, _ in bound_now]
    finally:
        logger.setLevel(saved)
        quiet_diagnostics()
    assert (standard_pdu_recv_handler in handlers) is bound
    assert pydicom_config.settings.reading_validation_mode == pydicom_config.IGNORE


@pytest.mark.parametrize("enforced", [False, True])
def test_a_standard_uids_verdict_is_pynetdicoms_decided_once(
    enforced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_config.VALIDATORS, "UI", _config.VALIDATORS["UI"])  # put back after
    quiet_diagnostics()
    monkeypatch.setattr(_config, "ENFORCE_UID_CONFORMANCE", enforced)
    ours = ["1.2.840.10008.1.1", "1.2.840.10008.1.2.1", "1.02.3", "1.2.3." + "4" * 70, ""]
    checked: list[str] = []

    def counted(value: Any) -> tuple[bool, str]:
        if str(value) in ours:  # not another test's server thread's
            checked.append(str(value))
        return validate_ui(value)

    monkeypatch.setattr(scu, "validate_ui", counted)
    scu._ui_verdict.cache_clear()
    for value in ours + ours:
        assert _config.VALIDATORS["UI"](UID(value)) == validate_ui(UID(value)), value
    # The standard's (Verification, Explicit VR Little Endian) once; any other UID each time.
    assert checked == ours + ours[2:]
    assert scu._ui_verdict.cache_info().currsize == 2
    assert _config.VALIDATORS["UI"](b"1.2") == (False, "must be pydicom.uid.UID")
    with pytest.raises(ValueError, match=r"exceed 64|non-conformant"):
        PresentationContext().abstract_syntax = "1.2.3." + "4" * 70  # still refused
