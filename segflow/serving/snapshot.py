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
import math
import os
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from segflow.core.engines import Engine, scalar

POINTER = "CURRENT"
FILE_PREFIX = "snapshot-"
# Identity-graph identifiers a caller may look a profile up by. `email_hash` is left out: it is salted with the
# pipeline's secret, so no caller can compute it; callers send `email_sha256:<hex>` (the plain SHA-256 of the
# normalised address, as ad platforms use).
LOOKUP_TYPES = ("crm_contact_id", "anonymous_id", "analytics_user_id", "transaction_customer_ref")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE profiles (user_id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE identifiers (identifier TEXT PRIMARY KEY, user_id TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE segments (name TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE members (segment TEXT, user_id TEXT, PRIMARY KEY (segment, user_id)) WITHOUT ROWID;
"""


class NothingPublished(RuntimeError):
    """The warehouse has no published scores to serve yet."""


def _clean(value: Any) -> Any:
    """JSON-safe scalars: NaN/NA become null, numpy scalars Python ones, dates ISO strings."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return value


def _json_or_text(value: Any) -> Any:
    """Evidence columns hold JSON text; keep them structured in the documents."""
    value = _clean(value)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _day(value: Any) -> str | None:
    value = _clean(value)
    return None if value is None else str(value)[:10]


_REASON = re.compile(r"^(?P<feature>[^=]+)=(?P<value>.*) \((?P<effect>[+-]?[0-9.eE+-]+)\)$")


def _reasons(text: Any) -> list[dict]:
    """`feature=value (+change); ...` (marts.user_scores.churn_reasons) as structured reason codes."""
    text = _clean(text)
    if not text:
        return []
    reasons = []
    for part in str(text).split("; "):
        match = _REASON.match(part.strip())
        if match:
            reasons.append(
                {"feature": match["feature"], "value": match["value"], "probability_change": float(match["effect"])}
            )
        else:
            reasons.append({"feature": None, "value": part.strip(), "probability_change": None})
    return reasons


def _rows(frame) -> Iterator[dict[str, Any]]:
    columns = list(frame.columns)
    for values in frame.itertuples(index=False, name=None):
        yield {c: _clean(v) for c, v in zip(columns, values, strict=True)}


def read_published(engine: Engine) -> dict[str, Any]:
    """The latest published date's scores, memberships, identity links and segments, as documents.

    Returns:
        {"as_of", "profiles": {user_id: doc}, "identifiers": {key: user_id}, "segments": {name: doc},
        "members": {segment: [user_id, ...]}} - members only users with marketing consent.
    """
    as_of = scalar(engine, "SELECT max(as_of) FROM marts.user_scores")
    if as_of is None:
        raise NothingPublished("marts.user_scores is empty: run the pipeline (segflow run) before serving")
    day = as_of.isoformat() if isinstance(as_of, (date, datetime)) else str(as_of)[:10]
    scores = engine.frame(
        "SELECT s.*, f.has_email_consent, f.has_tracking_consent, f.lifecycle_stage, f.email_sha256 "
        "FROM marts.user_scores AS s LEFT JOIN marts.user_features_history AS f "
        "ON f.user_id = s.user_id AND f.as_of = s.as_of WHERE s.as_of = CAST(? AS DATE)",
        [day],
    )
    memberships = engine.frame(
        "SELECT h.user_id, h.rule_name, h.segment_name, h.priority, h.is_primary, h.evidence, e.since "
        "FROM marts.user_segment_history AS h LEFT JOIN ("
        "  SELECT user_id, segment_name, max(as_of) AS since FROM marts.segment_membership_events "
        "  WHERE event = 'entered' AND as_of <= CAST(? AS DATE) GROUP BY user_id, segment_name"
        ") AS e ON e.user_id = h.user_id AND e.segment_name = h.segment_name "
        "WHERE h.as_of = CAST(? AS DATE) ORDER BY h.user_id, h.priority, h.segment_name",
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
    descriptions = dict(zip(rules["segment_name"], rules["description"], strict=True))

    by_user: dict[str, list[dict]] = defaultdict(list)
    rule_of: dict[str, str] = {}
    for row in _rows(memberships):
        rule_of[row["segment_name"]] = row["rule_name"]
        by_user[row["user_id"]].append(
            {
                "name": row["segment_name"],
                "rule": row["rule_name"],
                "priority": row["priority"],
                "is_primary": bool(row["is_primary"]),
                "since": _day(row["since"]),
                "evidence": _json_or_text(row["evidence"]),
            }
        )

    profiles: dict[str, dict] = {}
    identifiers: dict[str, str] = {}
    consenting: set[str] = set()
    for row in _rows(scores):
        user = row["user_id"]
        marketing = bool(row.get("has_email_consent"))
        if marketing:
            consenting.add(user)
        value = {k: row.get(k) for k in ("clv_12m", "expected_orders_90d", "p_alive")}
        profiles[user] = {
            "user_id": user,
            "as_of": day,
            "primary_segment": row.get("primary_segment"),
            "segments": by_user.get(user, []),
            "persona": {"cluster_id": row.get("cluster_id"), "name": row.get("persona")},
            "churn": {
                "probability": row.get("churn_probability"),
                "risk_band": row.get("churn_risk_band"),
                "reasons": _reasons(row.get("churn_reasons")),
            },
            "lifetime_value": value if any(v is not None for v in value.values()) else None,
            "lifecycle_stage": row.get("lifecycle_stage"),
            "consent": {"marketing": marketing, "tracking": bool(row.get("has_tracking_consent"))},
            # What the profile may be used for (docs/serving.md): without marketing consent, on-site
            # personalisation only - never a campaign audience.
            "usage": "marketing_and_personalisation" if marketing else "personalisation_only",
            "model_versions": {
                "clusterer": row.get("clusterer_version"),
                "churn": row.get("churn_model_version"),
                "clv": row.get("clv_model_version"),
            },
            "triggers": [],
        }
        if row.get("email_sha256"):
            identifiers[f"email_sha256:{str(row['email_sha256']).lower()}"] = user
    for kind, identifier, user in links.itertuples(index=False, name=None):
        if user in profiles:
            identifiers[f"{kind}:{identifier}"] = user

    members: dict[str, list[str]] = defaultdict(list)
    for user, entries in by_user.items():
        if user in consenting and user in profiles:
            for entry in entries:
                members[entry["name"]].append(user)
    segments = {}
    for row in _rows(sizes):
        name = row["segment_name"]
        rule = rule_of.get(name, name)
        segments[name] = {
            "name": name,
            "rule": rule,
            "description": _clean(descriptions.get(rule)),
            "size": row["members"],
            "primary_size": row["primary_members"],
            "marketable_size": len(members.get(name, [])),
            "as_of": day,
        }
    return {"as_of": day, "profiles": profiles, "identifiers": identifiers, "segments": segments, "members": members}


def snapshot_file(snapshot_dir: Path, version: str) -> Path:
    return snapshot_dir / f"{FILE_PREFIX}{version}.sqlite"


def new_version() -> str:
    """Sortable, unique enough for one writer: UTC time to the microsecond."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def write_snapshot(published: dict[str, Any], snapshot_dir: Path, version: str, source: str = "") -> Path:
    """Write one version's file (not yet current). Returns its path."""
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    final = snapshot_file(snapshot_dir, version)
    temporary = snapshot_dir / f".{final.name}.tmp"
    temporary.unlink(missing_ok=True)
    con = sqlite3.connect(temporary)
    try:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        con.executescript(_SCHEMA)
        meta = {
            "version": version,
            "as_of": published["as_of"],
            "built_at": datetime.now(UTC).isoformat(),
            "source": source,
            "profiles": str(len(published["profiles"])),
        }
        con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        con.executemany(
            "INSERT INTO profiles VALUES (?, ?)",
            ((user, json.dumps(doc, separators=(",", ":"))) for user, doc in published["profiles"].items()),
        )
        con.executemany("INSERT INTO identifiers VALUES (?, ?)", published["identifiers"].items())
        con.executemany(
            "INSERT INTO segments VALUES (?, ?)",
            ((name, json.dumps(doc, separators=(",", ":"))) for name, doc in published["segments"].items()),
        )
        con.executemany(
            "INSERT INTO members VALUES (?, ?)",
            ((name, user) for name, users in published["members"].items() for user in users),
        )
        con.commit()
    finally:
        con.close()
    with open(temporary, "rb+") as handle:  # durable before it can become current
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    return final


def switch_to(snapshot_dir: Path, version: str) -> None:
    """Make `version` current: one rename of the pointer file."""
    temporary = snapshot_dir / f".{POINTER}.tmp"
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
