"""Quality gates with Great Expectations Core 1.x.

Suites live as JSON under expectations/ (versioned with the code) and are synced into a project-local
GX file context (`quality.gx_dir`) on every run; each validation runs as a Checkpoint that stores its result
and updates the static Data Docs site. Each expectation carries
`meta.severity`: `critical` stops the pipeline before anything downstream is published; `warning` is
recorded and logged but does not block. Every result goes to the warehouse table
`quality.validation_results`.

Validation paths: raw and marts batches (every row a run loaded, a million users' candidate marts) are evaluated
inside the configured warehouse (`warehouse.url`, DuckDB or PostgreSQL) by segflow.quality.in_engine, with the
outcomes GX's own evaluation gives (tested), and stored in the GX context as validation results. Scores, which
exist in memory before they are published, are validated with GX's pandas datasource as a Checkpoint.
Row-level parsing problems never reach GX: the extract quarantines them (see docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segflow.core.config import Settings
from segflow.core.dbt import currency_rates
from segflow.core.engines import connect_engine, has_rows, scalar
from segflow.core.tables import VALIDATION_RESULTS_DDL
from segflow.extract.mapping import quote_ident

log = logging.getLogger(__name__)

RESULTS_DDL = VALIDATION_RESULTS_DDL  # defined with the other Python-written tables


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
    """The configured suites folder, else the suites installed with segflow."""
    from segflow.core.resources import EXPECTATIONS_DIR

    return Path(settings.get("quality", "expectations_dir", default=EXPECTATIONS_DIR))


def load_suite(settings: Settings, name: str):
    import great_expectations as gx

    doc = json.loads((expectations_dir(settings) / f"{name}.json").read_text())
    suite = gx.ExpectationSuite(name=doc["name"], expectations=doc["expectations"], meta=doc.get("meta"))
    # GX logs and skips invalid expectations; a typo in a suite must fail loudly instead.
    if len(suite.expectations) != len(doc["expectations"]):
        raise ValueError(
            f"expectations/{name}.json: {len(doc['expectations']) - len(suite.expectations)} invalid expectation(s)"
        )
    return suite, doc.get("meta", {}).get("key_column")


def gx_context(settings: Settings):
    """The project's GX file context (results store + Data Docs), created on first use."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    root = Path(settings.get("quality", "gx_dir"))
    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}  # type: ignore[assignment]
    return context


def data_docs_index(settings: Settings) -> Path:
    return Path(settings.get("quality", "gx_dir")) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"


def _replace(collection, obj):
    """Store `obj` under its name, replacing a stored one (keeps GX's store in sync with expectations/)."""
    # GX raises different types for "not found" across its stores.
    with contextlib.suppress(Exception):
        collection.delete(obj.name)
    return collection.add(obj)


def _batch_definition(context, asset_name: str):
    try:
        source = context.data_sources.get("segflow")
    except (KeyError, ValueError):
        source = context.data_sources.add_pandas("segflow")
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(asset_name)
    try:
        return asset.get_batch_definition("batch")
    except KeyError:
        return asset.add_batch_definition_whole_dataframe("batch")


def run_identifier(run_name: str, run_time: datetime | None = None):
    """GX's run identifier for `run_name` (the as-of date and run id), in the characters its stores accept."""
    from great_expectations.core.run_identifier import RunIdentifier

    return RunIdentifier(run_name=re.sub(r"[^A-Za-z0-9_.=-]+", "_", run_name), run_time=run_time)


def observed_text(result: dict[str, Any]) -> Any:
    """What an expectation observed, as recorded: its observed value, or for a row-level expectation the count and
    share of unexpected rows with up to three of them."""
    observed = result.get("observed_value")
    if observed is None and result.get("unexpected_count") is not None:
        observed = (
            f"{result['unexpected_count']} unexpected of {result.get('element_count')}"
            f" ({result.get('unexpected_percent') or 0:.2f}%); e.g. {result.get('partial_unexpected_list', [])[:3]}"
        )
    return observed


def validate_frame(
    settings: Settings,
    suite_name: str,
    frame: pd.DataFrame,
    parameters: dict[str, Any] | None = None,
    run_name: str | None = None,
) -> list[ExpectationOutcome]:
    """Validate `frame` with the suite as a GX Checkpoint (result stored, Data Docs updated). `run_name` names
    the result in the Data Docs (the pipeline passes the as-of date and the Airflow run id)."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    suite, key = load_suite(settings, suite_name)
    context = gx_context(settings)
    suite = _replace(context.suites, suite)
    definition = _replace(
        context.validation_definitions,
        gx.ValidationDefinition(name=suite_name, data=_batch_definition(context, suite_name), suite=suite),
    )
    # GX reports the first unexpected rows by position; the keys of those five are read here. Asked for key columns
    # (unexpected_index_column_names), GX looks up the key of every unexpected row one at a time before keeping
    # five: 70 s of a 90 s validation on the 400,000 lines of Online Retail, whose category is always empty.
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
    frame = frame.reset_index(drop=True)
    checkpoint = _replace(
        context.checkpoints,
        gx.Checkpoint(
            name=suite_name,
            validation_definitions=[definition],
            result_format=result_format,
            actions=[UpdateDataDocsAction(name="update_data_docs")],
        ),
    )
    run_id = run_identifier(run_name) if run_name else None
    run = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters or {}, run_id=run_id)
    result = next(iter(run.run_results.values()))
    outcomes = []
    for r in result.results:
        cfg = r.expectation_config
        res = r.result or {}
        observed = observed_text(res)
        info = r.exception_info or {}
        errors = (
            [info]
            if info.get("raised_exception")
            else [v for v in info.values() if isinstance(v, dict) and v.get("exception_message")]
        )
        if errors:  # GX reports metric errors as a failed expectation: say so instead of "observed None"
            observed = f"error: {errors[0].get('exception_message')}"
        positions = [i for i in res.get("partial_unexpected_index_list") or [] if isinstance(i, (int, np.integer))]
        sample = [str(v) for v in frame[key].iloc[positions]] if key and key in frame.columns else []
        outcomes.append(
            ExpectationOutcome(
                suite_name,
                cfg.type,
                cfg.kwargs.get("column"),
                (cfg.meta or {}).get("severity", "critical"),
                bool(r.success),
                str(observed),
                res.get("unexpected_count"),
                res.get("element_count"),
                sample[:5],
            )
        )
    return outcomes


def record(settings: Settings, outcomes: list[ExpectationOutcome], as_of: date, run_id: str) -> None:
    """Append the outcomes to quality.validation_results in the configured warehouse."""

    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        (
            run_id,
            as_of,
            o.suite,
            o.expectation,
            o.column,
            o.severity,
            o.success,
            o.observed,
            o.unexpected_count,
            o.element_count,
            json.dumps(o.sample_keys),
            now,
        )
        for o in outcomes
    ]
    with connect_engine(settings.warehouse_url, read_only=False) as engine:
        engine.execute(RESULTS_DDL)
        if rows:
            engine.executemany(
                "INSERT INTO quality.validation_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )


def enforce(outcomes: list[ExpectationOutcome]) -> dict[str, int]:
    for o in outcomes:
        if not o.success and o.severity != "critical":
            log.warning("quality warning: %s", o.describe())
    critical = [o for o in outcomes if not o.success and o.severity == "critical"]
    if critical:
        raise QualityGateError(
            "critical quality check(s) failed, nothing was published:\n" + "\n".join(o.describe() for o in critical)
        )
    return {"checked": len(outcomes), "warnings": sum(not o.success for o in outcomes)}


def _run_suites(settings: Settings, batches: dict[str, tuple[pd.DataFrame, dict]], as_of: date, run_id: str) -> dict:
    outcomes: list[ExpectationOutcome] = []
    for suite, (frame, params) in batches.items():
        outcomes.extend(validate_frame(settings, suite, frame, params, run_name=f"as_of={as_of}_{run_id}"))
    record(settings, outcomes, as_of, run_id)
    return enforce(outcomes)


# The batches the raw suites judge: the rows this run loaded plus columns a single row cannot tell (is the
# customer known to the CRM? does the normalised email repeat?). Written in portable SQL with the loaded table's
# columns listed (segflow.core.engines transpiles it for each engine).
EMAIL_PATTERN = "^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+[.][A-Za-z]{2,}$"
RAW_TABLES = {"raw_transactions": "transactions", "raw_events": "events", "raw_crm_contacts": "crm_contacts"}
# Clear-text PII never reaches GX (results, logs and Data Docs show unexpected values): these columns are left
# out or masked, and the suite judges flags computed from them. A shared email is checked within the run's batch.
RAW_PII_EXCLUDED = {"raw_crm_contacts": ("email", "phone", "first_name", "last_name")}
RAW_REPLACED = {
    "raw_transactions": {
        "customer_ref": "CASE WHEN position('@' IN t.customer_ref) > 0 THEN '(an email)' ELSE t.customer_ref END"
    }
}
RAW_DERIVED = {
    "raw_transactions": [
        "t.order_id || '|' || coalesce(t.line_id, '') AS order_line_key",
        """(NOT EXISTS (SELECT 1 FROM raw.crm_contacts)
            OR t.customer_ref IN (SELECT contact_id FROM raw.crm_contacts)
            OR lower(trim(t.customer_ref)) IN (SELECT lower(trim(email)) FROM raw.crm_contacts)) AS customer_known""",
    ],
    "raw_crm_contacts": [
        f"CASE WHEN t.email IS NOT NULL THEN regexp_matches(trim(t.email), '{EMAIL_PATTERN}') END AS email_is_valid",
        "t.email IS NOT NULL AND count(*) OVER (PARTITION BY lower(trim(t.email))) > 1 AS email_shared",
    ],
}


def raw_batch_sql(engine, suite: str) -> str:
    """The SELECT of `suite`'s batch (one `?`: the run id) over the loaded table's current columns.

    Args:
        engine: the warehouse (segflow.core.engines).
        suite: a raw suite name (a key of RAW_TABLES).

    Returns:
        Portable SQL in DuckDB's dialect.
    """
    table = f"raw.{RAW_TABLES[suite]}"
    excluded = RAW_PII_EXCLUDED.get(suite, ())
    replaced = RAW_REPLACED.get(suite, {})
    columns = [c for c in engine.column_types(f"SELECT * FROM {table}") if c not in excluded]
    select = [f"{replaced[c]} AS {quote_ident(c)}" if c in replaced else f"t.{quote_ident(c)}" for c in columns]
    return f"SELECT {', '.join(select + RAW_DERIVED.get(suite, []))} FROM {table} AS t WHERE t._run_id = ?"


def raw_parameters(as_of: date) -> dict[str, dict[str, Any]]:
    """The raw suites' `$PARAMETER` values for a run as of `as_of`."""
    max_ts = pd.Timestamp(as_of + timedelta(days=2))
    return {
        "raw_transactions": {"max_ts": max_ts, "currencies": sorted(currency_rates())},
        "raw_events": {"max_ts": max_ts},
        "raw_crm_contacts": {"min_birth_date": pd.Timestamp("1900-01-01"), "as_of": pd.Timestamp(as_of)},
    }


def _judge_in_engine(
    settings: Settings, engine, batches: dict[str, tuple[str, list[Any], dict[str, Any]]]
) -> tuple[list[ExpectationOutcome], list[tuple[str, list[dict[str, Any]]]]]:
    """Evaluate each suite over its batch inside the warehouse. `batches` maps a suite to (its batch's SELECT, the
    SELECT's parameters, the suite's `$PARAMETER` values)."""
    from segflow.quality.in_engine import validate_relation

    outcomes: list[ExpectationOutcome] = []
    evaluated = []
    for suite, (sql, sql_parameters, parameters) in batches.items():
        suite_outcomes, results = validate_relation(engine, suite, sql, sql_parameters, settings, parameters)
        outcomes.extend(suite_outcomes)
        evaluated.append((suite, results))
    return outcomes, evaluated


def _conclude(
    settings: Settings,
    outcomes: list[ExpectationOutcome],
    evaluated: list[tuple[str, list[dict[str, Any]]]],
    as_of: date,
    run_id: str,
) -> dict:
    """Store in-engine results in the GX Data Docs and the warehouse, then stop the run on a critical failure. Called
    once the reading connection is closed (a DuckDB writer may be waiting for it)."""
    from segflow.quality.in_engine import store_in_data_docs

    for suite, results in evaluated:
        store_in_data_docs(settings, suite, results, batch_id=f"{suite}-{run_id}", run_name=f"as_of={as_of}_{run_id}")
    record(settings, outcomes, as_of, run_id)
    return enforce(outcomes)


def validate_raw_tables(settings: Settings, as_of: date, run_id: str) -> dict:
    """Validate the rows this run loaded (the run's batch) for each raw source that received any. The row checks
    run inside the warehouse (segflow.quality.in_engine): a first run's tens of millions of rows never become a
    pandas frame. Results go to quality.validation_results and the GX Data Docs like every other suite's."""

    params = raw_parameters(as_of)
    with connect_engine(settings.warehouse_url) as engine:
        batches = {}
        for suite in RAW_TABLES:
            sql = raw_batch_sql(engine, suite)
            if has_rows(engine, sql, [run_id]):
                batches[suite] = (sql, [run_id], params[suite])
        outcomes, evaluated = _judge_in_engine(settings, engine, batches)
    return _conclude(settings, outcomes, evaluated, as_of, run_id)


def validate_mart_tables(settings: Settings, as_of: date, run_id: str) -> dict:
    """Validate the audit candidates of the marts (write-audit-publish: nothing is published yet), and the
    candidate's segment sizes against the published previous run. Evaluated inside the warehouse like the raw
    gate: a million users' features are never pulled into a frame."""
    from segflow.core.dbt import audit_schema

    bounds = settings.get("quality", "segment_size_ratio", default={"min": 0.5, "max": 2.0})
    schema = audit_schema(as_of.isoformat())
    with connect_engine(settings.warehouse_url) as engine:
        rules = [r[0] for r in engine.fetchall("SELECT segment_name FROM reference.segment_rules")]
        batches: dict[str, tuple[str, list[Any], dict[str, Any]]] = {
            "marts_user_features": (f"SELECT * FROM {schema}.audit_user_features", [], {}),
            "marts_user_segments": (f"SELECT * FROM {schema}.audit_user_segments", [], {"segment_rules": rules}),
        }
        if scalar(
            engine,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'marts' "
            "AND table_name = 'user_segment_history'",
        ):
            # Compared with the latest published date before this one (a backfill compares with its own past).
            sizes = f"""
                WITH cand AS (SELECT rule_name AS segment_name, count(*) AS members
                              FROM {schema}.audit_user_segments GROUP BY rule_name),
                     prev AS (SELECT rule_name AS segment_name, count(*) AS previous_members
                              FROM marts.user_segment_history
                              WHERE as_of = (SELECT max(as_of) FROM marts.user_segment_history WHERE as_of < ?)
                              GROUP BY rule_name)
                SELECT prev.segment_name, coalesce(members, 0) AS members, previous_members,
                       coalesce(members, 0) / CAST(previous_members AS DOUBLE) AS size_ratio
                FROM prev LEFT JOIN cand ON cand.segment_name = prev.segment_name"""
            ratios = {"min_ratio": float(bounds["min"]), "max_ratio": float(bounds["max"])}
            if has_rows(engine, sizes, [as_of]):
                batches["marts_segment_sizes"] = (sizes, [as_of], ratios)
        outcomes, evaluated = _judge_in_engine(settings, engine, batches)
    return _conclude(settings, outcomes, evaluated, as_of, run_id)


def validate_scores(settings: Settings, scores: pd.DataFrame, as_of: date, run_id: str) -> dict:
    """Validate scores in memory, before they are published."""

    with connect_engine(settings.warehouse_url) as engine:
        # The features scored: the published table for its date, else that date's history partition.
        feature_rows = scalar(
            engine,
            """
            SELECT coalesce(nullif((SELECT count(*) FROM marts.user_features WHERE as_of = ?), 0),
                            (SELECT count(*) FROM marts.user_features_history WHERE as_of = ?))""",
            [as_of, as_of],
        )
    return _run_suites(settings, {"marts_user_scores": (scores, {"feature_rows": feature_rows})}, as_of, run_id)
