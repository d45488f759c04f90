"""Quality gates with Great Expectations Core 1.x.

Suites live as JSON under expectations/ (versioned with the code). Each expectation carries
`meta.severity`: `critical` stops the pipeline before anything downstream is published; `warning` is
recorded and logged but does not block. Every result goes to the warehouse table
`quality.validation_results`.

Validation path: the batch is read from DuckDB into a pandas DataFrame and validated with GX's pandas
datasource. GX's SQL datasource on DuckDB is unreliable (see DEVELOPERS notes), while pandas evaluation
is exact; batches are bounded (the rows one run loaded, or one mart), so memory stays predictable.
Row-level parsing problems never reach GX: the extract quarantines them (see docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from segflow.config import Settings
from segflow.warehouse import connect

log = logging.getLogger(__name__)

RESULTS_DDL = """
CREATE SCHEMA IF NOT EXISTS quality;
CREATE TABLE IF NOT EXISTS quality.validation_results (
    run_id VARCHAR, as_of DATE, suite VARCHAR, expectation VARCHAR, column_name VARCHAR, severity VARCHAR,
    success BOOLEAN, observed_value VARCHAR, unexpected_count BIGINT, element_count BIGINT,
    unexpected_sample VARCHAR, validated_at TIMESTAMP);
"""
KNOWN_CURRENCIES = ["EUR", "GBP", "USD", "CHF", "SEK"]


class QualityGateError(RuntimeError):
    """A critical expectation failed: nothing downstream may be published."""


@dataclass
class ExpectationOutcome:
    suite: str
    expectation: str
    column: str | None
    severity: str
    success: bool
    observed: str
    unexpected_count: int | None
    element_count: int | None
    sample_keys: list[str] = field(default_factory=list)

    def describe(self) -> str:
        where = f" on column {self.column}" if self.column else ""
        sample = f"; sample keys: {', '.join(self.sample_keys)}" if self.sample_keys else ""
        return f"[{self.suite}] {self.expectation}{where} failed ({self.severity}): observed {self.observed}{sample}"


def expectations_dir(settings: Settings) -> Path:
    return Path(settings.get("quality", "expectations_dir"))


def load_suite(settings: Settings, name: str):
    import great_expectations as gx

    doc = json.loads((expectations_dir(settings) / f"{name}.json").read_text())
    suite = gx.ExpectationSuite(name=doc["name"], expectations=doc["expectations"], meta=doc.get("meta"))
    # GX logs and skips invalid expectations; a typo in a suite must fail loudly instead.
    if len(suite.expectations) != len(doc["expectations"]):
        raise ValueError(f"expectations/{name}.json: {len(doc['expectations']) - len(suite.expectations)} invalid expectation(s)")
    return suite, doc.get("meta", {}).get("key_column")


def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    return context


def validate_frame(settings: Settings, suite_name: str, frame: pd.DataFrame, parameters: dict[str, Any] | None = None) -> list[ExpectationOutcome]:
    suite, key = load_suite(settings, suite_name)
    context = _context()
    batch_def = (context.data_sources.add_pandas("segflow").add_dataframe_asset(suite_name)
                 .add_batch_definition_whole_dataframe("batch"))
    batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
    if key and key in frame.columns:
        result_format["unexpected_index_column_names"] = [key]
    result = batch.validate(suite, expectation_parameters=parameters or {}, result_format=result_format)
    outcomes = []
    for r in result.results:
        cfg = r.expectation_config
        res = r.result or {}
        observed = res.get("observed_value")
        if observed is None and res.get("unexpected_count") is not None:
            observed = f"{res['unexpected_count']} unexpected of {res.get('element_count')} ({res.get('unexpected_percent', 0):.2f}%)" \
                       f"; e.g. {res.get('partial_unexpected_list', [])[:3]}"
        if r.exception_info and r.exception_info.get("raised_exception"):
            observed = f"error: {r.exception_info.get('exception_message')}"
        sample = [str(i.get(key)) for i in res.get("partial_unexpected_index_list") or [] if isinstance(i, dict) and key in i]
        outcomes.append(ExpectationOutcome(suite_name, cfg.type, cfg.kwargs.get("column"), (cfg.meta or {}).get("severity", "critical"),
                                           bool(r.success), str(observed), res.get("unexpected_count"), res.get("element_count"), sample[:5]))
    return outcomes


def record(settings: Settings, outcomes: list[ExpectationOutcome], as_of: date, run_id: str) -> None:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = [(run_id, as_of, o.suite, o.expectation, o.column, o.severity, o.success, o.observed, o.unexpected_count,
             o.element_count, json.dumps(o.sample_keys), now) for o in outcomes]
    with connect(settings.warehouse_path) as con:
        con.execute(RESULTS_DDL)
        if rows:
            con.executemany("INSERT INTO quality.validation_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def enforce(outcomes: list[ExpectationOutcome]) -> dict[str, int]:
    for o in outcomes:
        if not o.success and o.severity != "critical":
            log.warning("quality warning: %s", o.describe())
    critical = [o for o in outcomes if not o.success and o.severity == "critical"]
    if critical:
        raise QualityGateError("critical quality check(s) failed, nothing was published:\n" + "\n".join(o.describe() for o in critical))
    return {"checked": len(outcomes), "warnings": sum(not o.success for o in outcomes)}


def _run_suites(settings: Settings, batches: dict[str, tuple[pd.DataFrame, dict]], as_of: date, run_id: str) -> dict:
    outcomes: list[ExpectationOutcome] = []
    for suite, (frame, params) in batches.items():
        outcomes.extend(validate_frame(settings, suite, frame, params))
    record(settings, outcomes, as_of, run_id)
    return enforce(outcomes)


def validate_raw_tables(settings: Settings, as_of: date, run_id: str) -> dict:
    """Validate the rows this run loaded (the run's batch) for each raw source that received any."""
    max_ts = pd.Timestamp(as_of + timedelta(days=2))
    batches: dict[str, tuple[pd.DataFrame, dict]] = {}
    with connect(settings.warehouse_path, read_only=True) as con:
        for suite, table, params in (
            ("raw_transactions", "transactions", {"max_ts": max_ts, "currencies": KNOWN_CURRENCIES}),
            ("raw_events", "events", {"max_ts": max_ts}),
            ("raw_crm_contacts", "crm_contacts", {"as_of": as_of.isoformat()}),
        ):
            frame = con.execute(f"SELECT * FROM raw.{table} WHERE _run_id = ?", [run_id]).df()
            if table == "crm_contacts" and "birth_date" in frame:
                frame["birth_date"] = frame["birth_date"].astype(str)
            if len(frame):
                batches[suite] = (frame, params)
    return _run_suites(settings, batches, as_of, run_id)


def validate_mart_tables(settings: Settings, as_of: date, run_id: str) -> dict:
    """Validate the audit candidates of the marts (write-audit-publish: nothing is published yet)."""
    with connect(settings.warehouse_path, read_only=True) as con:
        features = con.execute("SELECT * FROM audit.audit_user_features").df()
        segments = con.execute("SELECT * FROM audit.audit_user_segments").df()
        rules = [r[0] for r in con.execute("SELECT segment_name FROM reference.segment_rules").fetchall()]
    return _run_suites(settings, {"marts_user_features": (features, {}),
                                  "marts_user_segments": (segments, {"segment_rules": rules})}, as_of, run_id)


def validate_scores(settings: Settings, scores: pd.DataFrame, as_of: date, run_id: str) -> dict:
    """Validate scores in memory, before they are published."""
    with connect(settings.warehouse_path, read_only=True) as con:
        feature_rows = con.execute("SELECT count(*) FROM marts.user_features WHERE as_of = ?::DATE", [as_of.isoformat()]).fetchall()[0][0]
    if not feature_rows:
        feature_rows = len(scores)  # scoring a past date from the history: the history partition is the reference
    return _run_suites(settings, {"marts_user_scores": (scores, {"feature_rows": feature_rows})}, as_of, run_id)
