"""Erasure (GDPR art. 17, CCPA deletion): a person asks to be forgotten, and the next run forgets them everywhere.

Requests arrive through an `erasure_requests` source (any source kind: a CRM table, a file drop, an API) or
`segflow erase --contact-id C | --email E`. The build's `apply_erasures` task, right after the extract, resolves
each request to the person - the contact, every contact sharing its email, their transaction references, the
anonymous ids their devices were stitched to - and deletes their rows from the raw layer (contacts, events,
transactions, quarantined rows, the requests themselves), the incremental staging events, every published history
(features, segment memberships and events, identity links), the scores, the churn training set, the CRM
write-back tables (crm_segments, crm_triggers) and the real-time stores (segflow.realtime.erasure: trigger state,
output and dead-letter streams, trigger files). Later exports cannot contain them. Models keep only synthetic input examples (no user's row
leaves the warehouse that way, see segflow.ml.features.synthetic_example), so there is nothing to remove there.

What is kept: `raw.erasure_log`, one row per request with only salted hashes of the identifiers and the number of
rows removed per table - enough to prove the request was honoured, and to keep honouring it: every later run
deletes rows matching a logged hash that a source delivers again (a CRM that still holds the contact). Applying a
request twice removes nothing more: erasure is idempotent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from segflow.core.config import Settings
from segflow.core.engines import Engine, connect_engine, scalar

log = logging.getLogger(__name__)

LOG_DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE TABLE IF NOT EXISTS raw.erasure_requests (
    request_id VARCHAR, contact_id VARCHAR, email VARCHAR, requested_at TIMESTAMP, _source VARCHAR,
    _source_file VARCHAR, _file_date DATE, _row_ref VARCHAR, _run_id VARCHAR, _loaded_at TIMESTAMP, email_hash VARCHAR);
CREATE TABLE IF NOT EXISTS raw.erasure_log (
    request_hash VARCHAR, contact_hash VARCHAR, email_hash VARCHAR, requested_at TIMESTAMP, applied_at TIMESTAMP,
    rows_erased JSON);
CREATE TABLE IF NOT EXISTS raw.erasure_suppressions (kind VARCHAR, identifier_hash VARCHAR);
"""

# Tables holding a person's rows by canonical user id (present only once the pipeline has built them).
USER_TABLES = (
    "marts_store.store_user_features_history",
    "marts_store.store_user_segment_history",
    "marts_store.store_segment_membership_events",
    "marts_store.store_user_identity_links",
    "scoring.user_scores",
    "ml.churn_training_set",
)


@dataclass
class ErasureSummary:
    requests: int = 0
    people: int = 0
    rows_erased: dict[str, int] = field(default_factory=dict)
    crm_rows_erased: int = 0
    realtime_erased: dict[str, int] = field(default_factory=dict)


def _hash(expr: str) -> str:
    """The salted hash of a normalised identifier, as the extract computes email hashes (salt bound as ?)."""
    return f"sha256(CAST(? AS VARCHAR) || lower(trim({expr})))"


def request_erasure(settings: Settings, contact_id: str | None = None, email: str | None = None) -> str:
    """Record a request (the `segflow erase` command); the next run applies it. Returns the request id."""
    if not (contact_id or email):
        raise ValueError("an erasure request names a contact id or an email")
    now = datetime.now(UTC).replace(tzinfo=None)
    request_id = f"cli-{now:%Y%m%dT%H%M%S%f}"
    with connect_engine(settings.warehouse_url, read_only=False) as engine:
        engine.execute(LOG_DDL)
        engine.execute(
            "INSERT INTO raw.erasure_requests (request_id, contact_id, email, requested_at, _source, _run_id, "
            "_loaded_at) VALUES (?, ?, ?, ?, 'cli', 'cli', ?)",
            [request_id, contact_id, email, now, now],
        )
    return request_id


def _existing(engine: Engine, qualified: str) -> bool:
    """Whether the table exists (views on top of it, such as the marts, need no deleting)."""
    schema, table = qualified.split(".")
    return bool(
        scalar(
            engine,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ? "
            "AND table_type = 'BASE TABLE'",
            [schema, table],
        )
    )


def _temp_table(engine: Engine, name: str, query: str, params: list | None = None) -> None:
    """(Re)create the temporary table `name` as `query` (portable: no CREATE OR REPLACE on PostgreSQL). The DROP
    names the temporary schema: unqualified, it falls through to the default schema when no temporary table of that
    name exists, and would drop a warehouse table that happens to bear the name."""
    engine.execute(f"DROP TABLE IF EXISTS {engine.temp_schema}.{name}")
    engine.execute(f"CREATE TEMP TABLE {name} AS {query}", params or [])


def apply_erasures(settings: Settings, run_id: str, salt: str) -> ErasureSummary:
    """Apply new requests everywhere, and every request ever logged to what this run loaded (idempotent)."""
    summary = ErasureSummary()
    now = datetime.now(UTC).replace(tzinfo=None)
    erased: dict[str, int] = {}
    ids: list[str] = []
    anonymous: list[str] = []
    with connect_engine(settings.warehouse_url, read_only=False) as engine:
        engine.execute(LOG_DDL)
        with engine.transaction() as con:

            def delete(table: str, where: str, params: list | None = None) -> None:
                if _existing(con, table):
                    count = con.changed(f"DELETE FROM {table} WHERE {where}", params or [])
                    if count:
                        erased[table] = erased.get(table, 0) + count

            pending = con.fetchall(
                f"SELECT request_id, {_hash('contact_id')}, {_hash('email')}, requested_at FROM raw.erasure_requests",
                [salt, salt],
            )
            summary.requests = len(pending)
            if pending:
                # 1. The people asked for: contacts named by id or email, every contact sharing their email, the ids
                #    the analytics tool knew them by, and the devices (anonymous ids) stitched to them.
                _temp_table(
                    con,
                    "erase_requested",
                    "SELECT * FROM (VALUES "
                    + ", ".join("(?, ?)" for _ in pending)
                    + ") AS t(contact_hash, email_hash)",
                    [v for _, contact_hash, email_hash, _ in pending for v in (contact_hash, email_hash)],
                )
                _temp_table(
                    con,
                    "erase_contacts",
                    f"""SELECT DISTINCT contact_id, email_hash, lower(trim(email)) AS email FROM raw.crm_contacts
                    WHERE {_hash("contact_id")} IN (SELECT contact_hash FROM erase_requested)
                       OR email_hash IN (SELECT email_hash FROM erase_requested)""",
                    [salt],
                )
                con.execute(
                    """INSERT INTO erase_contacts SELECT DISTINCT c.contact_id, c.email_hash, lower(trim(c.email))
                       FROM raw.crm_contacts c WHERE c.email_hash IN (SELECT email_hash FROM erase_contacts)
                       AND c.contact_id NOT IN (SELECT contact_id FROM erase_contacts)"""
                )
                _temp_table(
                    con,
                    "erase_ids",
                    f"""SELECT contact_id AS id FROM erase_contacts
                    UNION SELECT user_id FROM raw.events
                          WHERE {_hash("user_id")} IN (SELECT contact_hash FROM erase_requested)""",
                    [salt],
                )
                _temp_table(
                    con,
                    "erase_email_hashes",
                    """SELECT email_hash FROM erase_contacts WHERE email_hash IS NOT NULL
                    UNION SELECT email_hash FROM erase_requested WHERE email_hash IS NOT NULL""",
                )
                _temp_table(
                    con,
                    "erase_anonymous",
                    """SELECT DISTINCT anonymous_id FROM raw.events WHERE user_id IN (SELECT id FROM erase_ids)""",
                )
                summary.people = scalar(con, "SELECT count(*) FROM erase_ids")
                # 2. Their identifiers, as salted hashes only, so that later loads of the same person are dropped.
                con.execute(
                    f"""INSERT INTO raw.erasure_suppressions
                    SELECT DISTINCT kind, h FROM (
                        SELECT 'contact' AS kind, {_hash("id")} AS h FROM erase_ids
                        UNION SELECT 'email', email_hash FROM erase_email_hashes
                        UNION SELECT 'anonymous', {_hash("anonymous_id")} FROM erase_anonymous
                    ) AS new WHERE NOT EXISTS (SELECT 1 FROM raw.erasure_suppressions AS s
                                               WHERE s.kind = new.kind AND s.identifier_hash = new.h)""",
                    [salt, salt],
                )
                # 3. Everywhere they are.
                delete(
                    "raw.crm_contacts",
                    "contact_id IN (SELECT id FROM erase_ids) OR email_hash IN "
                    "(SELECT email_hash FROM erase_email_hashes)",
                )
                delete(
                    "raw.transactions",
                    "customer_ref IN (SELECT id FROM erase_ids) OR customer_ref_hash IN "
                    "(SELECT email_hash FROM erase_email_hashes)",
                )
                delete(
                    "raw.events",
                    "user_id IN (SELECT id FROM erase_ids) OR anonymous_id IN "
                    "(SELECT anonymous_id FROM erase_anonymous)",
                )
                delete(
                    "staging.stg_analytics__events",
                    "analytics_user_id IN (SELECT id FROM erase_ids) OR "
                    "anonymous_id IN (SELECT anonymous_id FROM erase_anonymous)",
                )
                # Quarantined rows keep their raw record: drop those mentioning one of the person's identifiers.
                delete(
                    "raw.quarantine",
                    "EXISTS (SELECT 1 FROM (SELECT id AS v FROM erase_ids UNION SELECT email FROM erase_contacts UNION "
                    "SELECT anonymous_id FROM erase_anonymous) AS ident WHERE length(ident.v) >= 3 "
                    "AND strpos(lower(raw_record), lower(ident.v)) > 0)",
                )
                for table in USER_TABLES:
                    delete(table, "user_id IN (SELECT id FROM erase_ids)")
                if _existing(con, "quality.validation_results"):  # failing rows' keys sampled by the quality gates
                    con.execute(
                        "UPDATE quality.validation_results SET unexpected_sample = NULL WHERE EXISTS (SELECT 1 "
                        "FROM erase_ids WHERE strpos(unexpected_sample, '\"' || id || '\"') > 0)"
                    )
                delete(
                    "marts_store.store_user_identity_links",
                    "identifier IN (SELECT anonymous_id FROM erase_anonymous) "
                    "OR identifier IN (SELECT email_hash FROM erase_email_hashes)",
                )
                for schema, table in con.fetchall(
                    "SELECT c.table_schema, c.table_name FROM information_schema.columns c JOIN information_schema.tables "
                    "t USING (table_schema, table_name) WHERE c.column_name = 'user_id' AND c.table_schema LIKE 'audit%' "
                    "AND t.table_type = 'BASE TABLE'"
                ):
                    delete(f"{schema}.{table}", "user_id IN (SELECT id FROM erase_ids)")
                ids = [r[0] for r in con.fetchall("SELECT id FROM erase_ids")]
                anonymous = [r[0] for r in con.fetchall("SELECT anonymous_id FROM erase_anonymous")]
                for request_id, contact_hash, email_hash, requested_at in pending:
                    con.execute(
                        f"INSERT INTO raw.erasure_log SELECT {_hash('?')}, ?, ?, ?, ?, CAST(? AS JSON)",
                        [salt, str(request_id), contact_hash, email_hash, requested_at, now, json.dumps(erased)],
                    )
                con.execute("DELETE FROM raw.erasure_requests")  # the requests' clear text goes with them
            # 4. Every run: rows this run loaded again for someone already forgotten (a source still holding them).
            if scalar(con, "SELECT count(*) FROM raw.erasure_suppressions"):
                suppressed = "SELECT identifier_hash FROM raw.erasure_suppressions WHERE kind = '{}'"
                delete(
                    "raw.crm_contacts",
                    f"_run_id = ? AND ({_hash('contact_id')} IN ({suppressed.format('contact')}) "
                    f"OR email_hash IN ({suppressed.format('email')}))",
                    [run_id, salt],
                )
                delete(
                    "raw.transactions",
                    f"_run_id = ? AND ({_hash('customer_ref')} IN ({suppressed.format('contact')}) "
                    f"OR customer_ref_hash IN ({suppressed.format('email')}))",
                    [run_id, salt],
                )
                delete(
                    "raw.events",
                    f"_run_id = ? AND ({_hash('user_id')} IN ({suppressed.format('contact')}) "
                    f"OR {_hash('anonymous_id')} IN ({suppressed.format('anonymous')}))",
                    [run_id, salt, salt],
                )
    summary.rows_erased = erased
    summary.crm_rows_erased = _erase_from_crm(settings, ids)
    if ids:
        from segflow.realtime.erasure import erase_from_stream

        summary.realtime_erased = erase_from_stream(settings, ids, anonymous)
    if summary.requests or erased:
        log.info(
            "erasure: %d new request(s), %d person id(s), rows erased %s", summary.requests, summary.people, erased
        )
    return summary


def _erase_from_crm(settings: Settings, ids: list[str]) -> int:
    """Remove the people from the CRM write-back tables (crm_segments; crm_triggers, the real-time deliveries)."""
    url, table = settings.get("writeback", "crm_url"), settings.get("writeback", "crm_table", default="crm_segments")
    if not url or not ids:
        return 0
    from sqlalchemy import MetaData, Table, create_engine, delete, inspect

    engine = create_engine(url)
    try:
        removed = 0
        for name in (table, "crm_triggers"):
            if not inspect(engine).has_table(name):
                continue
            target = Table(name, MetaData(), autoload_with=engine)
            with engine.begin() as conn:
                for start in range(0, len(ids), 5000):
                    removed += conn.execute(
                        delete(target).where(target.c.contact_id.in_(ids[start : start + 5000]))
                    ).rowcount
        return removed
    finally:
        engine.dispose()
