"""Logging of every ``pacs`` process: text or JSON lines (``PACS_LOG_FORMAT``), each line with
the id of the HTTP request or DIMSE association it was written for.

The ids live in context variables: the HTTP middleware sets :data:`request_id` for each
request (``viewer_api.observability``), the DIMSE server :data:`association_id` in each
association's thread (``pacs.dimse.server``); :class:`ContextFilter` copies them onto every
record, so no log call has to pass them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import uuid
import warnings
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "association_id",
    "configure_logging",
    "ignore_logged_pydicom_warnings",
    "new_id",
    "request_id",
]

LogFormat = Literal["text", "json"]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
association_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "association_id", default=None
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"
# Records' own attributes: whatever else a record carries came from ``extra=``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "context"}


def new_id() -> str:
    """A fresh request or association id: 16 hex digits."""
    return uuid.uuid4().hex[:16]


class ContextFilter(logging.Filter):
    """Puts ``request_id``, ``association_id`` and a ``context`` text (" [request ...]") on
    every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        request, association = request_id.get(), association_id.get()
        record.request_id, record.association_id = request, association
        parts = [f"request {request}"] if request else []
        parts += [f"association {association}"] if association else []
        record.context = f" [{', '.join(parts)}]" if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, process, the
    request or association id when there is one, ``extra`` fields, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key in ("request_id", "association_id"):
            value = getattr(record, key, None)
            if value:
                line[key] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in ("request_id", "association_id", *line):
                line[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(log_format: str | None = None) -> None:
    """INFO to stderr as text or JSON (*log_format*, default ``PACS_LOG_FORMAT``), with the
    request or association id; the chatty libraries at WARNING."""
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host's own configuration stays
        chosen = (log_format or os.environ.get("PACS_LOG_FORMAT") or "text").lower()
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(ContextFilter())
        formatter = JsonFormatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("pynetdicom", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ignore_logged_pydicom_warnings()


def ignore_logged_pydicom_warnings() -> None:
    """Ignore pydicom's warnings: it logs each one first (``pydicom.misc.warn_and_log``, its
    only way of warning), so the warning repeats a log line, and costs memory for good: under
    Python's default action every distinct message is remembered in the warning module's
    ``__warningregistry__`` for the life of the process. pydicom's messages name the offending
    value, so a server fed bad data (an invalid UID, undecodable text) grew without bound:
    about 0.15 MB per 1,000 such inputs when fuzzed. Ignored warnings are not remembered."""
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
