"""Write scored segments back: the CRM's `crm_segments` table and the activation export files.

Consent: users without email-marketing consent keep a CRM row (so the CRM knows they were scored) but
their marketing fields stay empty, and they never appear in activation exports.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd

from segflow.core.config import Settings
from segflow.core.engines import connect_engine

log = logging.getLogger(__name__)

MARKETING_FIELDS = ["persona", "primary_segment", "churn_risk_band", "churn_probability"]
CRM_COLUMNS = ["contact_id", "as_of", "marketing_allowed", *MARKETING_FIELDS]
EXPORT_COLUMNS = [
    "user_id",
    "email_sha256",
    "as_of",
    "persona",
    "primary_segment",
    "churn_risk_band",
    "churn_probability",
    "churn_reasons",
    "clv_12m",
    "expected_orders_90d",
    "p_alive",
]


@dataclass
class WritebackSummary:
    crm_inserted: int
    crm_updated: int
    crm_deleted: int
    crm_unchanged: int
    exported_users: int
    export_files: list[str]


def read_scored_users(settings: Settings) -> pd.DataFrame:
    """The published scores of every user with the consent and contact fields write-back needs."""
    with connect_engine(settings.warehouse_url) as engine:
        return engine.frame("""
            SELECT s.user_id, s.as_of, s.persona, s.primary_segment, s.churn_risk_band, s.churn_probability,
                   s.churn_reasons, s.clv_12m, s.expected_orders_90d, s.p_alive, f.has_email_consent, f.is_crm_contact, f.email_sha256
            FROM marts.user_scores s JOIN marts.user_features f USING (user_id)
            ORDER BY s.user_id
        """)


def crm_rows(scored: pd.DataFrame) -> pd.DataFrame:
    """The desired content of crm_segments: one row per CRM contact, marketing fields only with consent."""
    rows = scored[scored["is_crm_contact"].astype(bool)].copy()
    rows = rows.rename(columns={"user_id": "contact_id"})
    rows["marketing_allowed"] = rows["has_email_consent"].astype(bool)
    rows["as_of"] = pd.to_datetime(rows["as_of"]).dt.strftime("%Y-%m-%d")
    rows["churn_probability"] = rows["churn_probability"].astype("float64").round(6)
    for col in MARKETING_FIELDS:
        rows[col] = rows[col].astype(object).where(rows["marketing_allowed"], None)
    return rows[CRM_COLUMNS].reset_index(drop=True)


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Both sides of the comparison in one representation: Python values or None (vectorised: 1M rows)."""
    out = frame[CRM_COLUMNS].copy()
    allowed = out["marketing_allowed"]
    probability = pd.to_numeric(out["churn_probability"], errors="coerce").astype("float64").round(6)
    out = out.astype(object).where(pd.notna(out), None)
    # 1 and 0 (an integer column) hash as True and False, so this map also covers them.
    out["marketing_allowed"] = (
        pd.Series(allowed.astype(object), index=out.index)
        .where(allowed.notna(), None)
        .map({True: True, False: False, None: None})
    )
    out["churn_probability"] = probability.astype(object).where(probability.notna(), None)
    return out.set_index("contact_id")


def crm_insert(engine, table):
    """An INSERT into `table` that supports ON CONFLICT DO UPDATE on the CRM's database (PostgreSQL or SQLite)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (postgresql if engine.dialect.name == "postgresql" else sqlite).insert(table)


def sync_crm(desired: pd.DataFrame, url: str, table: str = "crm_segments") -> tuple[int, int, int, int]:
    """Upsert changed rows and delete contacts no longer scored. Returns (inserted, updated, deleted, unchanged)."""
    from sqlalchemy import Boolean, Column, DateTime, Float, MetaData, String, Table, create_engine, delete, select

    engine = create_engine(url)
    meta = MetaData()
    tbl = Table(
        table,
        meta,
        Column("contact_id", String(64), primary_key=True),
        Column("as_of", String(10)),
        Column("marketing_allowed", Boolean),
        Column("persona", String(200)),
        Column("primary_segment", String(200)),
        Column("churn_risk_band", String(20)),
        Column("churn_probability", Float),
        Column("synced_at", DateTime),
    )
    try:
        meta.create_all(engine)
        with engine.begin() as conn:
            current = pd.DataFrame(
                conn.execute(select(*[tbl.c[c] for c in CRM_COLUMNS])).fetchall(), columns=CRM_COLUMNS
            )
            want, have = _normalise(desired), _normalise(current)
            new_ids = want.index.difference(have.index)
            gone_ids = have.index.difference(want.index)
            common = want.index.intersection(have.index)
            a, b = want.loc[common], have.loc[common]
            changed_mask = ~((a == b) | (a.isna() & b.isna())).all(axis=1)
            changed_ids = common[changed_mask.to_numpy()]
            upserts = want.loc[new_ids.union(changed_ids)].reset_index()
            now = datetime.now(UTC).replace(tzinfo=None)
            if len(upserts):
                upserts["synced_at"] = now
                stmt = crm_insert(engine, tbl)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["contact_id"], set_={c: stmt.excluded[c] for c in CRM_COLUMNS[1:] + ["synced_at"]}
                )
                # One statement executed for many rows (the driver's executemany / SQLAlchemy's insertmanyvalues):
                # compiling a multi-row VALUES statement per 5,000 rows took most of a 1M-user write-back.
                for start in range(0, len(upserts), 50_000):
                    rows = [
                        {str(k): v for k, v in r.items()}
                        for r in upserts.iloc[start : start + 50_000].to_dict("records")
                    ]
                    conn.execute(stmt, rows)
            for start in range(0, len(gone_ids), 5000):
                conn.execute(delete(tbl).where(tbl.c.contact_id.in_(list(gone_ids[start : start + 5000]))))
    finally:
        engine.dispose()
    return len(new_ids), len(changed_ids), len(gone_ids), len(common) - len(changed_ids)


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def escape_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells a spreadsheet would run as a formula (OWASP CSV injection: =, +, -, @, tab, carriage return
    first) get a leading apostrophe, which spreadsheets show as text. Numbers stay numbers."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            text = out[column].astype("object")
            risky = text.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_PREFIXES))
            out[column] = text.where(~risky, "'" + text.astype(str))
    return out


def write_activation_export(scored: pd.DataFrame, export_dir: str | Path, as_of: date) -> tuple[int, list[str]]:
    """CSV + Parquet of consenting users, written to temp files and renamed into place (atomic per file)."""
    folder = Path(export_dir) / f"as_of={as_of.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = scored[scored["has_email_consent"].astype(bool)].copy()
    rows["as_of"] = pd.to_datetime(rows["as_of"]).dt.strftime("%Y-%m-%d")
    rows = rows[EXPORT_COLUMNS].reset_index(drop=True)
    paths = []
    # The CSV is opened in spreadsheets: its cells are escaped. Parquet is read by programs: values stay raw.
    for suffix, write in (
        # RFC 4180 line ends: the writer then quotes every field holding a \r or \n.
        ("csv", lambda f, p: escape_formulas(f).to_csv(p, index=False, lineterminator="\r\n")),
        ("parquet", lambda f, p: f.to_parquet(p, index=False)),
    ):
        final = folder / f"segments.{suffix}"
        tmp = folder / f".segments.{suffix}.tmp"
        write(rows, tmp)
        os.replace(tmp, final)
        paths.append(str(final))
    return len(rows), paths


def write_back(settings: Settings, as_of: date) -> WritebackSummary:
    scored = read_scored_users(settings)
    if scored.empty:
        raise LookupError("marts.user_scores is empty: nothing to write back")
    scored_as_of = str(scored["as_of"].iloc[0])[:10]
    if scored_as_of != as_of.isoformat():
        raise LookupError(f"marts.user_scores is as of {scored_as_of}, not {as_of}: score that date first")
    wb = settings.raw["writeback"]
    if wb.get("crm_url"):
        inserted, updated, deleted, unchanged = sync_crm(
            crm_rows(scored), wb["crm_url"], wb.get("crm_table", "crm_segments")
        )
    else:
        log.info("writeback.crm_url is not set: no CRM write-back")
        inserted = updated = deleted = unchanged = 0
    exported, files = write_activation_export(scored, wb["export_dir"], as_of)
    log.info(
        "CRM sync: %d inserted, %d updated, %d deleted, %d unchanged; export: %d users",
        inserted,
        updated,
        deleted,
        unchanged,
        exported,
    )
    return WritebackSummary(inserted, updated, deleted, unchanged, exported, files)
