"""Index growth on PostgreSQL: ingest rate and QIDO latency from an empty index to 1,000,000
instances, with the query plans PostgreSQL chose.

Rows for the bulk are generated straight into the index (COPY: patients, studies, series,
instances and their change-feed rows, shaped like a hospital's: 2 series of 25 instances per
study, 2 studies per patient, dates over ten years, three modalities); the measured part is
real: `pacs serve` on that database, dcmtk storescu sending fresh 512x512 CT studies by C-STORE,
and QIDO-RS searches over HTTP. At each checkpoint the server is started twice: once to
measure ingest, once with PostgreSQL's ``auto_explain`` on (every statement's plan to the
server log) for the searches, so that the plans are those of the archive's own SQL. A plan with
a sequential scan of a large table is reported.

    nice .venv/bin/python bench/index_growth.py --instances 1000000 --checkpoints 4

writes ``bench/results/index_growth.json``. The blobs of the generated rows do not exist: the
database is thrown away afterwards (never run `pacs fsck` on it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg
from psycopg import sql

from bench.generate import write_study
from bench.ingest import STORESCU
from bench.machine import save
from tests.servers import PacsServer, PostgresServer

RESULTS = Path(__file__).resolve().parent / "results" / "index_growth.json"
SEND = [STORESCU, "-aet", "BENCH", "-aec", "PACS", "+sd", "+r", "127.0.0.1"]
SERIES_PER_STUDY = 2
INSTANCES_PER_SERIES = 25
STUDIES_PER_PATIENT = 2
MODALITIES = ("CT", "MR", "CR")
BIG_TABLES = ("instance", "series", "study", "patient", "change")
EXPLAIN_SETTINGS = {
    "session_preload_libraries": "auto_explain",
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_format": "text",
    "auto_explain.log_analyze": "on",  # actual rows and times per node (the pass is not timed)
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000, help="bulk rows at the end")
    parser.add_argument("--checkpoints", type=int, default=4, help="bulk steps after empty")
    parser.add_argument("--study-instances", type=int, default=100, help="per measured study")
    parser.add_argument("--repetitions", type=int, default=3, help="measured studies per step")
    parser.add_argument("--queries", type=int, default=30, help="requests per QIDO search")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pacs-growth-"))
    postgres = PostgresServer()
    try:
        url = postgres.new_database(migrated=True)
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        studies = list(range(args.repetitions))
        checkpoints = []
        generated = 0
        step = args.instances // args.checkpoints
        for index in range(args.checkpoints + 1):
            if index:
                started = time.perf_counter()
                generated += bulk_insert(dsn, generated, step)
                print(f"{generated} rows generated in {time.perf_counter() - started:.0f} s")
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("VACUUM ANALYZE")  # as autovacuum would have, in time
            checkpoint: dict[str, Any] = {"instances": count(dsn, "instance")}
            checkpoint["ingest"] = measure_ingest(work, url, studies, index, args)
            checkpoint["qido"], checkpoint["plans"] = measure_qido(
                work, url, dsn, postgres, args.queries, index
            )
            checkpoints.append(checkpoint)
            print(json.dumps({k: v for k, v in checkpoint.items() if k != "plans"}), flush=True)
        write_results(checkpoints, args)
    finally:
        postgres.close()
        shutil.rmtree(work, ignore_errors=True)


def bulk_insert(dsn: str, start: int, instances: int) -> int:
    """*instances* more instance rows (with their hierarchy and change rows) after the
    *start* already generated; returns *instances*."""
    per_study = SERIES_PER_STUDY * INSTANCES_PER_SERIES
    first_study, studies = start // per_study, instances // per_study
    now = datetime.now(UTC)
    with psycopg.connect(dsn) as conn:
        facility = conn.execute("SELECT min(id) FROM facility").fetchone()
        facility_id = facility[0] if facility and facility[0] else None
        if facility_id is None:
            facility_id = conn.execute(
                "INSERT INTO facility (name, created_at) VALUES ('growth', now()) RETURNING id"
            ).fetchone()[0]  # type: ignore[index]
        base = conn.execute(
            "SELECT coalesce(max(id), 0) FROM patient UNION ALL SELECT coalesce(max(id), 0) "
            "FROM study UNION ALL SELECT coalesce(max(id), 0) FROM series"
        ).fetchall()
        patient_id, study_id, series_id = (row[0] for row in base)
        patients, study_rows, series_rows, instance_rows, change_rows = (
            io.StringIO() for _ in range(5)
        )
        for s in range(first_study, first_study + studies):
            study_id += 1
            if s % STUDIES_PER_PATIENT == 0:
                patient_id += 1
                patients.write(
                    f"{patient_id}\t{facility_id}\tGP{s // STUDIES_PER_PATIENT}\t\t"
                    f"GROWTH^PATIENT{s // STUDIES_PER_PATIENT}\t19600101\tO\t{now}\t"
                    f"{patient_id:032x}\n"
                )
            day = (now - timedelta(days=s % 3650)).strftime("%Y%m%d")
            study_uid = f"2.25.{s + 1}"
            modality = MODALITIES[s % len(MODALITIES)]
            study_rows.write(
                f"{study_id}\t{study_uid}\t{patient_id}\t{day}\t120000\tACC{s}\t{s}\t"
                f"growth study {s}\t\t{modality}\t{now}\t{now}\n"
            )
            for k in range(SERIES_PER_STUDY):
                series_id += 1
                series_uid = f"{study_uid}.{k + 1}"
                series_rows.write(
                    f"{series_id}\t{series_uid}\t{study_id}\t{modality}\t{k + 1}\t"
                    f"series {k + 1}\tCHEST\t{now}\t{now}\n"
                )
                for i in range(INSTANCES_PER_SERIES):
                    sop = f"{series_uid}.{i + 1}"
                    instance_rows.write(
                        f"{sop}\t{series_id}\t{facility_id}\t1.2.840.10008.5.1.4.1.1.2\t{i + 1}\t"
                        f"1.2.840.10008.1.2.1\t512\t512\t1\tISO_IR 100\tgrowth/{sop}\t"
                        f"526000\t{'0' * 64}\t{now}\tIMPORT\n"
                    )
                    change_rows.write(f"{now}\tinstance.stored\t{study_uid}\t{series_uid}\t{sop}\n")
        copies = [
            (
                "patient (id, facility_id, patient_id, issuer_of_patient_id, patient_name, "
                "patient_birth_date, patient_sex, updated_at, fhir_id)",
                patients,
            ),
            (
                "study (id, study_instance_uid, patient_fk, study_date, study_time, "
                "accession_number, study_id, study_description, referring_physician_name, "
                "modalities_in_study, created_at, last_received_at)",
                study_rows,
            ),
            (
                "series (id, series_instance_uid, study_fk, modality, series_number, "
                "series_description, body_part_examined, created_at, last_received_at)",
                series_rows,
            ),
            (
                "instance (sop_instance_uid, series_fk, facility_id, sop_class_uid, "
                "instance_number, transfer_syntax_uid, rows, columns, number_of_frames, "
                "specific_character_set, blob_key, size, sha256, received_at, source)",
                instance_rows,
            ),
            (
                "change (created_at, kind, study_instance_uid, series_instance_uid, "
                "sop_instance_uid)",
                change_rows,
            ),
        ]
        with conn.cursor() as cursor:
            for target, rows in copies:
                with cursor.copy(f"COPY {target} FROM STDIN") as copy:
                    copy.write(rows.getvalue())
            for table in ("patient", "study", "series"):  # ids given explicitly: move on
                cursor.execute(
                    sql.SQL(
                        "SELECT setval(pg_get_serial_sequence({}, 'id'), (SELECT max(id) FROM {}))"
                    ).format(sql.Literal(table), sql.Identifier(table))
                )
        conn.commit()
    return studies * per_study


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        return int(conn.execute(query).fetchone()[0])  # type: ignore[index]


def measure_ingest(
    work: Path, url: str, studies: list[int], checkpoint: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Send each pre-written study (fresh UIDs per checkpoint) by C-STORE; instances/s."""
    rates = []
    server = PacsServer(work / f"home-ingest-{checkpoint}", _server_env(url)).start()
    try:
        for n in studies:
            folder = work / f"send-{checkpoint}-{n}"
            write_study(folder, args.study_instances, f"G{checkpoint}X{n}", seed=1000 + n)
            started = time.perf_counter()
            subprocess.run(
                [*SEND, str(server.port), str(folder)],
                env={**os.environ, "TCP_NODELAY": "1"},
                check=True,
                capture_output=True,
                timeout=600,
            )
            rates.append(args.study_instances / (time.perf_counter() - started))
            shutil.rmtree(folder)
    finally:
        server.stop()
    return {"instances_per_second": [round(r, 1) for r in rates], "median": _median(rates)}


SEARCHES = {
    "study by PatientID": "/dicom-web/studies?PatientID=GP{p}",
    "study by AccessionNumber": "/dicom-web/studies?AccessionNumber=ACC{s}",
    "study by StudyInstanceUID": "/dicom-web/studies?StudyInstanceUID=2.25.{s1}",
    "study by StudyDate (one day)": "/dicom-web/studies?StudyDate={day}",
    "study by PatientName prefix": "/dicom-web/studies?PatientName=GROWTH%5EPATIENT{p}*",
    "studies, first page (limit 100)": "/dicom-web/studies?limit=100",
    "series of a study": "/dicom-web/studies/2.25.{s1}/series",
    "instances of a series": "/dicom-web/studies/2.25.{s1}/series/2.25.{s1}.1/instances",
}


def measure_qido(
    work: Path, url: str, dsn: str, postgres: PostgresServer, queries: int, checkpoint: int
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """p50/p95 of each search (values that exist, spread over the index), then once more each
    with auto_explain on for the plans PostgreSQL chose (not timed: logging plans costs)."""
    studies = max(count(dsn, "study"), 1)
    timings = {
        label: {"p50_ms": _median(samples), "p95_ms": _percentile(samples, 0.95)}
        for label, samples in _search(work / f"home-qido-{checkpoint}", url, queries, studies)
    }
    name = dsn.rsplit("/", 1)[1]
    log = postgres.root / "log"
    offset = log.stat().st_size
    _explain(dsn, name, on=True)
    try:
        list(_search(work / f"home-explain-{checkpoint}", url, 1, studies))
    finally:
        _explain(dsn, name, on=False)
    with log.open("rb") as handle:
        handle.seek(offset)
        plans = _plans(handle.read().decode(errors="replace"))
    return timings, plans


def _search(home: Path, url: str, queries: int, studies: int) -> Iterator[tuple[str, list[float]]]:
    """Each search of SEARCHES *queries* times (after one untimed request that warms the pool
    and caches) against a server started on *url*: its label and latencies in ms."""
    server = PacsServer(home, _server_env(url)).start()
    try:
        headers = {"Authorization": f"Bearer {server.token('admin', facilities=('*',))}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            for label, template in SEARCHES.items():
                samples = []
                for q in range(queries + 1):
                    s = (q * 7919) % studies
                    day = (datetime.now(UTC) - timedelta(days=s % 3650)).strftime("%Y%m%d")
                    route = template.format(p=s // STUDIES_PER_PATIENT, s=s, s1=s + 1, day=day)
                    started = time.perf_counter()
                    response = client.get(route)
                    elapsed = time.perf_counter() - started
                    if response.status_code not in (200, 204):
                        raise RuntimeError(f"{route}: {response.status_code} {response.text}")
                    if q:
                        samples.append(elapsed * 1000)
                yield label, samples
    finally:
        server.stop()


def _explain(dsn: str, database: str, on: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for setting, value in EXPLAIN_SETTINGS.items():
            if on:
                conn.execute(f"ALTER DATABASE \"{database}\" SET {setting} = '{value}'")
            else:
                conn.execute(f'ALTER DATABASE "{database}" RESET {setting}')


def _plans(text: str) -> dict[str, list[str]]:
    """The distinct plans auto_explain logged for SELECTs, keyed by the statement (its
    parameters are placeholders: one key per query shape); each a list of plan lines."""
    found: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\S.*LOG:  duration: )", text):
        if "Query Text:" not in block:
            continue
        lines = block.partition("Query Text:")[2].splitlines()
        first_node = next((n for n, line in enumerate(lines) if "(cost=" in line), len(lines))
        statement = " ".join(" ".join(lines[:first_node]).split())
        if not statement.upper().startswith(("SELECT", "WITH")):
            continue
        plan = [line.strip() for line in lines[first_node:] if line.strip()]
        found.setdefault(statement, [line for line in plan if "LOG:" not in line][:40])
    return found


def _seq_scans(plans: dict[str, list[str]]) -> list[str]:
    return sorted(
        {
            f"{table}: {statement}"
            for statement, lines in plans.items()
            for line in lines
            for table in BIG_TABLES
            if re.search(rf"Seq Scan on {table}\b", line)
        }
    )


def _server_env(url: str) -> dict[str, str]:
    return {
        "PACS_DATABASE_URL": url,
        "PACS_RECEIVERS": "2",
        "PACS_STABLE_AGE": "86400",
        "PACS_LOG_LEVEL": "WARNING",
    }


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def _percentile(values: list[float], fraction: float) -> float:
    return round(sorted(values)[int(fraction * (len(values) - 1))], 2) if values else 0.0


def write_results(checkpoints: list[dict[str, Any]], args: argparse.Namespace) -> None:
    first = checkpoints[0]["ingest"]["median"]
    last = checkpoints[-1]
    summary = {
        "instances_at_end": last["instances"],
        "ingest_median_first_inst_s": first,
        "ingest_median_last_inst_s": last["ingest"]["median"],
        "ingest_last_over_first": round(last["ingest"]["median"] / first, 3) if first else None,
        "qido_p50_ms_at_end": {k: v["p50_ms"] for k, v in last["qido"].items()},
        "seq_scans_at_end": _seq_scans(last["plans"]),
    }
    save(RESULTS, "index_growth", args, summary, checkpoints=checkpoints)


if __name__ == "__main__":
    main()
