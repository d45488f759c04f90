"""The serving snapshot: what the segment API answers, built from the published marts after a scoring run.

One SQLite file per version (`<snapshot_dir>/snapshot-<version>.sqlite`), written under a temporary name and renamed into
place, then made current by replacing the `CURRENT` pointer file (a rename: atomic). A reader reads the pointer
once per request and answers from that file only, so it sees one whole version, never a mix; the file it holds
stays readable after a newer version replaces it (replaced files are deleted after the grace period, and an open
file outlives its deletion). The same file feeds the Redis store (segflow.serving.store).

Tables: meta(key, value); profiles(user_id, doc JSON); identifiers(identifier, user_id), the lookup keys
`<type>:<id>` of the identity graph and `email_sha256:<hex>`; segments(name, doc JSON); members(segment, user_id),
the users with marketing consent only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from segflow.core.engines import Engine, scalar

POINTER = "CURRENT"
FILE_PREFIX = "snapshot-"
# Identity-graph identifiers a caller may look a profile up by. Left out: `email_hash`, salted with the pipeline's
# secret, so no caller can compute it (callers send `email_sha256:<hex>`, the plain SHA-256 of the normalised
# address, as ad platforms use); `transaction_customer_ref`, which the graph stores as that salted hash whenever the
# order carried an email.
LOOKUP_TYPES = ("crm_contact_id", "anonymous_id", "analytics_user_id")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE profiles (user_id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE identifiers (identifier TEXT PRIMARY KEY, user_id TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE segments (name TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE members (segment TEXT, user_id TEXT, PRIMARY KEY (segment, user_id)) WITHOUT ROWID;
"""


class NothingPublished(RuntimeError):
    """The warehouse has no published scores to serve yet."""


# The profile document, built by DuckDB (in this process, over frames read from the warehouse, whatever its engine):
# a million users' documents in seconds, where assembling them in Python took minutes. Doubles are written in their
# shortest round-trip form, NaN as null. The shape is the API's Profile model (segflow.serving.api).
_REASON = r"^([^=]+)=(.*) \(([+-]?[0-9.eE+-]+)\)$"
PROFILE_SQL = f"""
WITH seg AS (
    SELECT
        user_id,
        to_json(list(json_object(
            'name', segment_name, 'rule', rule_name, 'priority', priority, 'is_primary', is_primary,
            'since', strftime(CAST(since AS DATE), '%Y-%m-%d'),
            'evidence', coalesce(try_cast(evidence AS JSON), to_json(evidence))
        ) ORDER BY priority, segment_name)) AS segments
    FROM memberships GROUP BY user_id
)
SELECT
    s.user_id,
    json_object(
        'user_id', s.user_id,
        'as_of', CAST(? AS VARCHAR),
        'primary_segment', s.primary_segment,
        'segments', coalesce(seg.segments, '[]'::JSON),
        'persona', json_object('cluster_id', CAST(s.cluster_id AS BIGINT), 'name', s.persona),
        'churn', json_object(
            'probability', s.churn_probability,
            'risk_band', s.churn_risk_band,
            'reasons', CASE WHEN coalesce(s.churn_reasons, '') = '' THEN '[]'::JSON ELSE to_json(list_transform(
                string_split(s.churn_reasons, '; '),
                lambda r: CASE WHEN regexp_matches(trim(r), '{_REASON}') THEN json_object(
                    'feature', regexp_extract(trim(r), '{_REASON}', 1),
                    'value', regexp_extract(trim(r), '{_REASON}', 2),
                    'probability_change', CAST(regexp_extract(trim(r), '{_REASON}', 3) AS DOUBLE))
                ELSE json_object('feature', NULL, 'value', trim(r), 'probability_change', NULL) END
            )) END
        ),
        'lifetime_value', CASE WHEN s.clv_12m IS NULL AND s.expected_orders_90d IS NULL AND s.p_alive IS NULL
            THEN NULL ELSE json_object(
                'clv_12m', s.clv_12m, 'expected_orders_90d', s.expected_orders_90d, 'p_alive', s.p_alive) END,
        'lifecycle_stage', s.lifecycle_stage,
        'consent', json_object(
            'marketing', coalesce(s.has_email_consent, false), 'tracking', coalesce(s.has_tracking_consent, false)),
        -- What the profile may be used for (docs/serving.md): without marketing consent, on-site personalisation
        -- only - never a campaign audience.
        'usage', CASE WHEN coalesce(s.has_email_consent, false)
            THEN 'marketing_and_personalisation' ELSE 'personalisation_only' END,
        'model_versions', json_object(
            'clusterer', CAST(s.clusterer_version AS VARCHAR),
            'churn', CAST(s.churn_model_version AS VARCHAR),
            'clv', CAST(s.clv_model_version AS VARCHAR)),
        'triggers', '[]'::JSON
    )::VARCHAR AS doc
FROM scores AS s LEFT JOIN seg USING (user_id)
ORDER BY s.user_id
"""


def _day(value: Any) -> str:
    return value.isoformat()[:10] if isinstance(value, (date, datetime)) else str(value)[:10]


def read_published(engine: Engine) -> dict[str, Any]:
    """The latest published date's scores, memberships, identity links and segments, ready to write.

    Returns:
        {"as_of", "profiles": iterable of (user_id, JSON document), "identifiers": iterable of (key, user_id),
        "segments": {name: doc}, "members": iterable of (segment, user_id)} - members only users with marketing
        consent, every iterable ordered by its key.
    """
    import duckdb

    as_of = scalar(engine, "SELECT max(as_of) FROM marts.user_scores")
    if as_of is None:
        raise NothingPublished("marts.user_scores is empty: run the pipeline (segflow run) before serving")
    day = _day(as_of)
    scores = engine.frame(
        "SELECT s.*, f.has_email_consent, f.has_tracking_consent, f.lifecycle_stage, f.email_sha256 "
        "FROM marts.user_scores AS s LEFT JOIN marts.user_features_history AS f "
        "ON f.user_id = s.user_id AND f.as_of = s.as_of WHERE s.as_of = CAST(? AS DATE)",
        [day],
    )
    memberships = engine.frame(
        "SELECT h.user_id, h.rule_name, h.segment_name, h.priority, h.is_primary, "
        "CAST(h.evidence AS VARCHAR) AS evidence, e.since "
        "FROM marts.user_segment_history AS h LEFT JOIN ("
        "  SELECT user_id, segment_name, max(as_of) AS since FROM marts.segment_membership_events "
        "  WHERE event = 'entered' AND as_of <= CAST(? AS DATE) GROUP BY user_id, segment_name"
        ") AS e ON e.user_id = h.user_id AND e.segment_name = h.segment_name "
        "WHERE h.as_of = CAST(? AS DATE)",
        [day, day],
    )
    links = engine.frame(
        "SELECT identifier_type, identifier, user_id FROM marts.user_identity_links "
        "WHERE as_of = CAST(? AS DATE) AND identifier_type IN (" + ", ".join("?" * len(LOOKUP_TYPES)) + ")",
        [day, *LOOKUP_TYPES],
    )
    sizes = engine.frame(
        "SELECT segment_name, members, primary_members FROM marts.segment_sizes_over_time "
        "WHERE as_of = CAST(? AS DATE)",
        [day],
    )
    rules = engine.frame("SELECT segment_name, description FROM reference.segment_rules")

    con = duckdb.connect()
    for name, frame in (("scores", scores), ("memberships", memberships), ("links", links), ("rules", rules)):
        con.register(f"{name}_frame", frame)
        con.execute(f"CREATE TABLE {name} AS FROM {name}_frame")  # tables: cursors (other connections) see them
        con.unregister(f"{name}_frame")
    con.execute("CREATE TABLE consenting AS SELECT user_id FROM scores WHERE coalesce(has_email_consent, false)")
    marketable = dict(
        con.execute(
            "SELECT segment_name, count(*) FROM memberships SEMI JOIN consenting USING (user_id) GROUP BY ALL"
        ).fetchall()
    )
    rule_of = dict(con.execute("SELECT DISTINCT segment_name, rule_name FROM memberships").fetchall())
    descriptions = dict(con.execute("SELECT segment_name, description FROM rules").fetchall())
    segments = {}
    for name, size, primary in sizes.itertuples(index=False, name=None):
        rule = rule_of.get(name, name)
        segments[name] = {
            "name": name,
            "rule": rule,
            "description": descriptions.get(rule),
            "size": int(size),
            "primary_size": int(primary),
            "marketable_size": int(marketable.get(name, 0)),
            "as_of": day,
        }

    def rows(sql: str, params: list | None = None) -> Iterator[tuple]:
        cursor = con.cursor()
        result = cursor.execute(sql, params or [])
        while batch := result.fetchmany(50_000):
            yield from batch
        cursor.close()

    return {
        "as_of": day,
        "profiles": rows(PROFILE_SQL, [day]),
        "identifiers": rows(
            # An id linked to several users (a shared email) answers the lowest user id: the same every run.
            "SELECT key, min(user_id) FROM ("
            "  SELECT 'email_sha256:' || lower(email_sha256) AS key, user_id FROM scores WHERE email_sha256 IS NOT NULL"
            "  UNION ALL SELECT identifier_type || ':' || identifier, user_id FROM links SEMI JOIN scores USING (user_id)"
            ") GROUP BY key ORDER BY key"
        ),
        "segments": segments,
        "members": rows(
            "SELECT DISTINCT segment_name, user_id FROM memberships SEMI JOIN consenting USING (user_id) ORDER BY ALL"
        ),
        "_connection": con,  # the in-memory database the iterables read
    }


def snapshot_file(snapshot_dir: Path, version: str) -> Path:
    return snapshot_dir / f"{FILE_PREFIX}{version}.sqlite"


def new_version() -> str:
    """Sortable, unique enough for one writer: UTC time to the microsecond."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def write_snapshot(
    published: dict[str, Any], snapshot_dir: Path, version: str, source: str = "", built_at: datetime | None = None
) -> dict[str, Any]:
    """Write one version's file (not yet current) from read_published's iterables. `built_at`: when the warehouse
    read began (an erasure applied after it may not be in this version), default now.

    Returns:
        {"path", "profiles", "identifiers", "segments", "members"}: the file and the rows written.
    """
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    final = snapshot_file(snapshot_dir, version)
    temporary = snapshot_dir / f".{final.name}.tmp"
    temporary.unlink(missing_ok=True)
    con = sqlite3.connect(temporary)
    counts: dict[str, Any] = {}
    try:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        con.execute("PRAGMA cache_size = -262144")  # 256 MB: the B-trees of a million profiles stay in memory
        con.executescript(_SCHEMA)
        for table in ("profiles", "identifiers", "members"):
            cursor = con.executemany(f"INSERT INTO {table} VALUES (?, ?)", published[table])
            counts[table] = cursor.rowcount
        con.executemany(
            "INSERT INTO segments VALUES (?, ?)",
            ((name, json.dumps(doc, separators=(",", ":"))) for name, doc in published["segments"].items()),
        )
        counts["segments"] = len(published["segments"])
        meta = {
            "version": version,
            "as_of": published["as_of"],
            "built_at": (built_at or datetime.now(UTC)).isoformat(),
            "source": source,
            "profiles": str(counts["profiles"]),
        }
        con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        con.commit()
    finally:
        con.close()
        if published.get("_connection") is not None:
            published["_connection"].close()
    with open(temporary, "rb+") as handle:  # durable before it can become current
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    return {"path": final, **counts}


def switch_to(snapshot_dir: Path, version: str) -> None:
    """Make `version` current: one rename of the pointer file."""
    temporary = snapshot_dir / f".{POINTER}.{version}.tmp"  # of its own: two writers never share one
    temporary.write_text(version + "\n")
    os.replace(temporary, snapshot_dir / POINTER)


def current_version(snapshot_dir: Path) -> str | None:
    try:
        return (snapshot_dir / POINTER).read_text().strip() or None
    except FileNotFoundError:
        return None


def expire_old(snapshot_dir: Path, grace_seconds: float, now: float | None = None) -> list[str]:
    """Delete versions replaced more than `grace_seconds` ago (a file's replacement time is the next version's
    creation) and leftovers of interrupted writes. The current version is always kept."""
    now = time.time() if now is None else now
    current = current_version(snapshot_dir)
    files = sorted(snapshot_dir.glob(f"{FILE_PREFIX}*.sqlite"))  # versions sort by time
    removed = []
    for older, newer in zip(files, files[1:], strict=False):
        version = older.stem[len(FILE_PREFIX) :]
        if version != current and now - newer.stat().st_mtime > grace_seconds:
            older.unlink(missing_ok=True)
            removed.append(version)
    for leftover in snapshot_dir.glob(".*.tmp"):
        if now - leftover.stat().st_mtime > max(grace_seconds, 3600):
            leftover.unlink(missing_ok=True)
    return removed


def open_snapshot(path: Path) -> sqlite3.Connection:
    """A read-only connection to one version's file (immutable: SQLite takes no locks on it)."""
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
