"""Tables of the SQL index: patient / study / series / instance (and superseded versions),
facilities and the change feed.

Attribute columns carry DICOM keywords in snake case; they are what C-FIND and QIDO-RS match
and return, so queries never open a blob. Free text is unbounded (peers send over-long values);
UIDs are bounded by PS3.5 9.1.
"""

from __future__ import annotations

import secrets

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

UID = String(64)


def new_fhir_id() -> str:
    """An opaque, unguessable FHIR logical id (32 hex digits fit ``[A-Za-z0-9\\-.]{1,64}``)."""
    return secrets.token_hex(16)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

facility = Table(
    "facility",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The called AE title whose C-STOREs belong to this facility (NULL: none of its own).
    Column("ae_title", String(16)),
    Index("uq_facility_ae_title", "ae_title", unique=True),
)

patient = Table(
    "patient",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("facility_id", ForeignKey("facility.id"), nullable=False),
    Column("patient_id", Text, nullable=False),  # "" when absent
    Column("issuer_of_patient_id", Text, nullable=False),  # "" when absent
    Column("patient_name", Text),
    Column("patient_birth_date", String(16)),
    Column("patient_sex", String(16)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The Patient resource's id: random, so ids cannot be enumerated; set once on insert.
    Column("fhir_id", String(32), nullable=False, unique=True, default=new_fhir_id),
    UniqueConstraint("facility_id", "patient_id", "issuer_of_patient_id"),
    # PatientID searched across facilities; migration 0023 also indexes lower(patient_name)
    # (text_pattern_ops on PostgreSQL), which PN matching compares (pacs.search).
    Index("ix_patient_patient_id", "patient_id"),
)

study = Table(
    "study",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_instance_uid", UID, nullable=False, unique=True),
    Column("patient_fk", ForeignKey("patient.id"), nullable=False, index=True),
    Column("study_date", String(16), index=True),
    Column("study_time", String(32)),
    Column("accession_number", Text, index=True),
    Column("study_id", Text),
    Column("study_description", Text),
    Column("referring_physician_name", Text),
    Column("modalities_in_study", Text),  # backslash-separated, as the CS multi-value
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_received_at", DateTime(timezone=True), nullable=False, index=True),
    # When the study was last marked stable; older than last_received_at: unstable again.
    Column("stable_at", DateTime(timezone=True)),
    # An instance arrived over a DIMSE association that has not ended with an A-RELEASE
    # (still open, aborted, connection lost) or that had a transient store failure: the send
    # may be partial, so the study waits PACS_STABLE_AGE_INCOMPLETE (pacs.stability).
    Column("unreleased", Boolean, nullable=False, server_default=false()),
)

# Referrals: a study of one facility shown to another, until a date or until revoked.
study_share = Table(
    "study_share",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_fk", ForeignKey("study.id", ondelete="CASCADE"), nullable=False),
    Column("facility_id", ForeignKey("facility.id"), nullable=False),
    Column("granted_by", Text, nullable=False),
    Column("granted_at", DateTime(timezone=True), nullable=False),
    Column("until", DateTime(timezone=True)),
    Column("revoked_by", Text),
    Column("revoked_at", DateTime(timezone=True)),
    Index("ix_study_share_study_fk", "study_fk", "facility_id"),
)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_instance_uid", UID, nullable=False, unique=True),
    Column("study_fk", ForeignKey("study.id"), nullable=False, index=True),
    Column("modality", String(16), index=True),
    Column("series_number", Integer),
    Column("series_description", Text),
    Column("body_part_examined", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_received_at", DateTime(timezone=True), nullable=False),
)

instance = Table(
    "instance",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", UID, nullable=False, unique=True),
    Column("series_fk", ForeignKey("series.id"), nullable=False, index=True),
    Column("facility_id", ForeignKey("facility.id"), nullable=False),
    Column("sop_class_uid", UID, nullable=False),
    Column("instance_number", Integer),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("number_of_frames", Integer),
    Column("specific_character_set", Text),
    Column("blob_key", String(255), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("source", String(16), nullable=False),  # DIMSE, STOW, AI, REVIEW, FSCK, IMPORT
    Column("calling_ae", String(16)),
    Column("remote_host", Text),
)

# Superseded versions of instances: a permitted replacement keeps the old blob, and this row
# says whose it was and until when it is kept (``pacs versions``). The current version is the
# instance row; a blob key may appear again when an old version is stored back.
instance_version = Table(
    "instance_version",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("sop_instance_uid", UID, nullable=False, index=True),
    Column("blob_key", String(255), nullable=False, index=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("transfer_syntax_uid", UID, nullable=False),
    # Who stored this version and when (copied from the instance row it was).
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("source", String(16), nullable=False),
    Column("calling_ae", String(16)),
    Column("remote_host", Text),
    # Who replaced it and when: protocol, AE title or token subject, address.
    Column("superseded_at", DateTime(timezone=True), nullable=False),
    Column("superseded_by", Text, nullable=False),
    Column("keep_until", DateTime(timezone=True), nullable=False, index=True),
)

change = Table(
    "change",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("study_instance_uid", UID, nullable=False),
    Column("series_instance_uid", UID),
    Column("sop_instance_uid", UID),
    Column("detail", Text),
    Index("ix_change_study_instance_uid_seq", "study_instance_uid", "seq"),
)

application_entity = Table(
    "application_entity",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ae_title", String(16), nullable=False, unique=True),
    Column("host", Text, nullable=False),
    Column("port", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Comma-separated AEPermission values (pacs.index.ae_registry).
    Column(
        "permissions",
        Text,
        nullable=False,
        server_default="store,find,retrieve,destination",
    ),
    # The host the AE must call from (a name or address); NULL: any.
    Column("expected_host", Text),
    # Whether C-MOVE sub-associations to it use TLS (PS3.15 B.1).
    Column("tls", Boolean, nullable=False, server_default=false()),
    # Comma-separated facility names the peer speaks for; NULL: the called AE's facility.
    Column("facilities", Text),
)

series_metadata = Table(
    "series_metadata",
    metadata,
    Column("series_fk", ForeignKey("series.id", ondelete="CASCADE"), primary_key=True),
    Column("etag", String(64), nullable=False),
    Column("base_url", Text, nullable=False),
    Column("body_gzip", LargeBinary, nullable=False),
    Column("built_at", DateTime(timezone=True), nullable=False),
)

job = Table(
    "job",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("study_instance_uid", UID),
    Column("payload", Text, nullable=False),  # JSON
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("run_after", DateTime(timezone=True), nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("result_ref", Text),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The model of the worker that last claimed it: "name version sha256:<weights digest>".
    Column("model", String(256)),
    Index("ix_job_status_run_after", "status", "run_after"),
    Index("ix_job_kind_study", "kind", "study_instance_uid"),
)

# The weights checksum each model name and version first ran with on this index (by a worker
# of any host): a worker whose weights of the same name and version differ is refused.
model_checksum = Table(
    "model_checksum",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", String(32), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("recorded_by", String(128), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

# AI results: one run per job (the job's result), its findings, and the series it rejected.
ai_run = Table(
    "ai_run",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("job_id", BigInteger().with_variant(Integer, "sqlite"), nullable=False, unique=True),
    Column("study_instance_uid", UID, nullable=False, index=True),
    Column("series_instance_uid", UID),  # the series analysed; NULL when none was eligible
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("rejections", Text, nullable=False),  # JSON: [{"series": uid, "reason": text}]
    # The DICOM results stored back into the study (TID 1500 SR, SEG), when written.
    Column("sr_sop_instance_uid", UID),
    Column("seg_sop_instance_uid", UID),
    Column("seconds", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The model's operating point (NULL: saved before 0010, when every finding saved was a
    # reported one), and the summary of the reportable findings, written with the run so the
    # worklist sorts studies from these rows alone.
    Column("report_threshold", Float),
    Column("reportable_count", Integer, nullable=False, server_default="0"),
    Column("max_probability", Float),  # NULL when nothing is reportable
    Column("max_diameter_mm", Float),
    # The study's row id (NULL only for a run of a study the index does not hold; a soft link
    # like study_instance_uid): the worklist finds each study's runs by it, newest first.
    Column("study_fk", Integer),
    Index("ix_ai_run_study_fk", "study_fk", "id"),
    # The patient's earlier study the findings were compared with (NULL: none), and the days
    # between the two StudyDates.
    Column("prior_study_instance_uid", UID),
    Column("prior_interval_days", Integer),
)

finding = Table(
    "finding",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("run_fk", ForeignKey("ai_run.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("tracking_uid", UID, nullable=False),
    # Centre in patient coordinates (LPS, mm), as DICOM and LUNA16 give them.
    Column("x", Float, nullable=False),
    Column("y", Float, nullable=False),
    Column("z", Float, nullable=False),
    Column("diameter_mm", Float, nullable=False),
    Column("probability", Float, nullable=False),
    # The nodule's character from its outline (NULL: saved before 0019, or not outlined).
    Column("nodule_type", String(16)),  # solid, part-solid, ground-glass
    Column("type_probability", Float),
    Column("long_axis_mm", Float),
    Column("short_axis_mm", Float),
    Column("mean_diameter_mm", Float),
    Column("volume_mm3", Float),
    Column("solid_diameter_mm", Float),
    # Against the prior study (NULL: not compared): new, stable, grown, shrunk; the
    # predecessor, its diameter, the volume change and the doubling time (NULL: not grown).
    Column("change", String(8)),
    Column("prior_tracking_uid", UID),
    Column("prior_diameter_mm", Float),
    Column("volume_change_mm3", Float),
    Column("doubling_time_days", Float),
)

# Webhooks: subscriptions with their change-feed cursor, and the durable outbox.
webhook = Table(
    "webhook",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),
    Column("events", Text, nullable=False),  # JSON list of change kinds
    Column("cursor_seq", BigInteger, nullable=False),  # changes up to here are in the outbox
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("facility", String(64)),  # only changes of this facility's studies; NULL: all
)

webhook_delivery = Table(
    "webhook_delivery",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("webhook_fk", ForeignKey("webhook.id", ondelete="CASCADE"), nullable=False),
    Column("change_seq", BigInteger, nullable=False),
    Column("study_instance_uid", UID, nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending, delivered
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    UniqueConstraint("webhook_fk", "change_seq"),
    Index("ix_webhook_delivery_status_next_attempt_at", "status", "next_attempt_at"),
    Index("ix_webhook_delivery_webhook_fk_study", "webhook_fk", "study_instance_uid", "id"),
)

# Radiologist review: one per study (no row: unread), the findings as reviewed (AI findings
# carried over by tracking UID, nodules the radiologist added), and every action, kept.
review = Table(
    "review",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("study_instance_uid", UID, nullable=False, unique=True),
    Column("status", String(16), nullable=False, index=True),  # in_review, final
    Column("version", Integer, nullable=False),  # optimistic concurrency: +1 per action
    Column("run_fk", ForeignKey("ai_run.id", ondelete="SET NULL")),  # the AI run reviewed
    # Its analysed series and AI SR, kept should the run row go (a re-run of its job).
    Column("series_instance_uid", UID, nullable=False),
    Column("ai_sr_sop_instance_uid", UID),
    Column("impression", Text, nullable=False),
    Column("lung_rads", String(8)),  # the radiologist's category, when set
    Column("revision", Integer, nullable=False),  # signed SR revisions so far (0: never signed)
    Column("signed_sr_sop_instance_uid", UID),
    Column("signed_by", Text),
    Column("signed_at", DateTime(timezone=True)),
    Column("signed_report", Text),  # JSON: what the last signature covered (FHIR reads it)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

review_finding = Table(
    "review_finding",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("review_fk", ForeignKey("review.id", ondelete="CASCADE"), nullable=False),
    Column("tracking_uid", UID, nullable=False),
    Column("origin", String(16), nullable=False),  # ai, radiologist
    Column("decision", String(16), nullable=False),  # pending, confirmed, rejected
    Column("reason", Text),
    Column("x", Float, nullable=False),
    Column("y", Float, nullable=False),
    Column("z", Float, nullable=False),
    Column("diameter_mm", Float, nullable=False),
    Column("probability", Float),  # the AI's; NULL for a nodule the radiologist added
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("review_fk", "tracking_uid"),
)

review_action = Table(
    "review_action",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("review_fk", ForeignKey("review.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("version", Integer, nullable=False),  # the review's version this action produced
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", Text, nullable=False),  # the token's subject
    Column("action", String(32), nullable=False),
    Column("tracking_uid", UID),
    Column("detail", Text, nullable=False),  # JSON
)

# The audit trail (pacs.audit): append-only, each row chained to the one before by its hash.
# Rows are ordered by (day, seq): the UTC day they were written on and their place in it.
audit_event = Table(
    "audit_event",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("day", String(10), nullable=False),  # YYYY-MM-DD (UTC): the chain's partition
    Column("seq", Integer, nullable=False),  # 1, 2, ... within the day
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("action", String(32), nullable=False),
    Column("outcome", String(1), nullable=False),  # 0, 4, 8 (RFC 3881)
    Column("outcome_reason", Text),
    Column("subject", Text, index=True),
    Column("roles", Text, nullable=False),  # space-separated
    Column("facility", Text),
    Column("ae_title", Text),
    Column("token_id", Text),
    Column("remote_address", Text),
    Column("patient_id", Text, index=True),
    Column("issuer_of_patient_id", Text),
    Column("study_instance_uid", UID, index=True),
    Column("series_instance_uid", UID),
    Column("sop_instance_uid", UID),
    Column("detail", Text, nullable=False),  # JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("day", "seq"),
)
