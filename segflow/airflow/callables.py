"""What the Airflow tasks do. DAG files only wire these callables; every function here is importable and
unit-tested without a scheduler. Heavy imports (dbt, MLflow, scikit-learn) happen inside the functions,
never at DAG parse time."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

from segflow.core.config import Settings, load_settings

log = logging.getLogger(__name__)

DUCKDB_POOL = "duckdb_writer"  # one slot: DuckDB allows one writer process per file


def parse_as_of(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError as exc:
        raise ValueError(f"as_of must be a date YYYY-MM-DD, got {value!r}") from exc


def resolve_as_of(
    explicit: Any = None,
    triggering_events: Iterable[Mapping[str, Any]] | None = None,
    logical_date: datetime | None = None,
    run_after: datetime | None = None,
    today: date | None = None,
) -> date:
    """The date a run computes everything as of, defined for every kind of run:

    1. an explicit `as_of` (run conf / params: manual runs, backfills, `segflow run --as-of`);
    2. asset-triggered runs: the latest `as_of` carried by the triggering asset events;
    3. scheduled runs: the day before the logical date (a run at midnight processes the day that just ended);
    4. runs without a logical date: the day before `run_after`, else yesterday (UTC).
    """
    if explicit not in (None, ""):
        return parse_as_of(explicit)
    dates = [parse_as_of(e["as_of"]) for e in (triggering_events or []) if e and e.get("as_of")]
    if dates:
        return max(dates)
    for moment in (logical_date, run_after):
        if moment is not None:
            return (moment - timedelta(days=1)).date()
    return (today or datetime.now(UTC).date()) - timedelta(days=1)


def _triggering_extras(context: Mapping[str, Any]) -> list[dict]:
    events = context.get("triggering_asset_events") or {}
    extras: list[dict] = []
    try:
        for _, asset_events in events.items():
            extras.extend(dict(getattr(e, "extra", None) or {}) for e in asset_events)
    except AttributeError:  # not a mapping (e.g. absent in tests)
        pass
    return extras


def _explicit_as_of(context: Mapping[str, Any]) -> Any:
    """The as_of a run was given (run conf wins over params), or None."""
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    return conf.get("as_of") or (context.get("params") or {}).get("as_of") or None


def as_of_dates_from_context(context: Mapping[str, Any]) -> list[date]:
    """The dates an asset-triggered scoring run was handed: every triggering event's as_of, oldest first (a
    manual run with an explicit as_of: that date only)."""
    if _explicit_as_of(context):
        return [as_of_from_context(context)]
    dates = sorted({parse_as_of(e["as_of"]) for e in _triggering_extras(context) if e.get("as_of")})
    return dates or [as_of_from_context(context)]


def score_dates_from_context(context: Mapping[str, Any]) -> list[date]:
    return dates_to_score(as_of_dates_from_context(context), explicit=bool(_explicit_as_of(context)))


def dates_to_score(handed: list[date], explicit: bool = False) -> list[date]:
    """What a scoring run scores: every published date whose scores are missing or older than its features' last
    quality gate - the dates its asset events carry are among them, and so are dates whose events Airflow folded
    into a window an active run had already closed (a backfill publishes many days meanwhile). Dates already
    scored since their last build are skipped. An explicit date (manual run) is scored alone, as asked."""
    from segflow.core.engines import connect_engine

    if explicit:
        return sorted(set(handed))
    with connect_engine(settings().warehouse_url) as engine:
        tables = {
            f"{s}.{t}" for s, t in engine.fetchall("SELECT table_schema, table_name FROM information_schema.tables")
        }
        if not {"marts.user_segment_history", "marts.user_scores_history", "quality.validation_results"} <= tables:
            return sorted(set(handed))  # nothing scored yet: the events are all there is to go by
        behind = [
            r[0]
            for r in engine.fetchall("""
            WITH gated AS (SELECT as_of, max(validated_at) AS gated_at FROM quality.validation_results
                           WHERE suite = 'marts_user_features' GROUP BY 1),
                 scored AS (SELECT as_of, max(scored_at) AS scored_at FROM marts.user_scores_history GROUP BY 1)
            -- Published by the build (training fills user_features_history for past feature dates, not segments).
            SELECT f.as_of
            FROM (SELECT DISTINCT as_of FROM marts.user_segment_history) AS f
            LEFT JOIN scored AS s USING (as_of)
            LEFT JOIN gated AS g USING (as_of)
            WHERE s.as_of IS NULL OR g.gated_at > s.scored_at""")
        ]
    if set(behind) - set(handed):
        log.info(
            "also scoring published dates without current scores: %s",
            ", ".join(map(str, sorted(set(behind) - set(handed)))),
        )
    if set(handed) - set(behind):
        log.info("already scored since their last build: %s", ", ".join(map(str, sorted(set(handed) - set(behind)))))
    return sorted(behind)


def as_of_from_context(context: Mapping[str, Any]) -> date:
    dag_run = context.get("dag_run")
    return resolve_as_of(
        _explicit_as_of(context),
        _triggering_extras(context),
        context.get("logical_date"),
        getattr(dag_run, "run_after", None),
    )


def settings() -> Settings:
    return load_settings()


# --- task callables -------------------------------------------------------------------------------


def full_refresh_from_context(context: Mapping[str, Any]) -> bool:
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    value = conf.get("full_refresh", (context.get("params") or {}).get("full_refresh", False))
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


def extract(as_of: str, run_id: str, full_refresh: bool = False) -> dict:
    from segflow.extract import run_extract

    results = run_extract(settings(), parse_as_of(as_of), run_id, force=full_refresh)
    return {name: asdict(r) for name, r in results.items()}


def apply_erasures(run_id: str) -> dict:
    """Forget every person who asked to be forgotten, everywhere the warehouse and the CRM table hold them."""
    from segflow.core.engines import connect_engine
    from segflow.extract import resolve_salt, source_specs
    from segflow.privacy.erasure import apply_erasures as run_erasures

    cfg = settings()
    with connect_engine(cfg.warehouse_url, read_only=False) as engine:
        salt = resolve_salt(engine, source_specs(cfg))
    return asdict(run_erasures(cfg, run_id, salt))


def validate_raw(as_of: str, run_id: str) -> dict:
    from segflow.quality.gates import validate_raw_tables

    return validate_raw_tables(settings(), parse_as_of(as_of), run_id)


def validate_marts(as_of: str, run_id: str) -> dict:
    from segflow.quality.gates import validate_mart_tables

    return validate_mart_tables(settings(), parse_as_of(as_of), run_id)


def discard_candidates(as_of: str) -> list[str]:
    """Drop the audit schemas of `as_of` once its marts are published (a failed run keeps them for inspection)."""
    from segflow.core.dbt import audit_schema
    from segflow.core.engines import connect_engine

    schema = audit_schema(as_of)
    with connect_engine(settings().warehouse_url, read_only=False) as engine:
        present = [
            r[0]
            for r in engine.fetchall(
                "SELECT DISTINCT schema_name FROM information_schema.schemata WHERE schema_name IN (?, ?)",
                [schema, f"{schema}_intermediate"],
            )
        ]
        for name in present:
            engine.execute(f"DROP SCHEMA {name} CASCADE")
    return present


def train(as_of: str) -> dict:
    from segflow.ml.train import train_models

    return asdict(train_models(settings(), parse_as_of(as_of)))


def score(as_of: str, run_id: str) -> dict:
    from segflow.ml.registry import has_champions
    from segflow.ml.scoring import compute_scores, publish_scores
    from segflow.quality.gates import validate_scores

    cfg = settings()
    day = parse_as_of(as_of)
    if not has_champions(cfg, day):
        # A backfill of a date before any model: the models of that date are trained as of it, never borrowed
        # from later dates (they learnt from outcomes unknown then).
        from segflow.ml.train import train_models

        log.info("no champion models trained on data up to %s: training them as of that date first", day)
        train_models(cfg, day)
    scores, cluster_version, churn_version = compute_scores(cfg, day)
    validate_scores(cfg, scores, day, run_id)  # raises before anything is published on a critical failure
    users = publish_scores(cfg, scores, day)
    return {"as_of": as_of, "users": users, "clusterer_version": cluster_version, "churn_model_version": churn_version}


def monitor(as_of: str) -> dict:
    """Drift and stability checks of the published scores. Warnings are logged, stored and sent to MLflow;
    with `monitoring.on_drift: fail` they also fail this task (after publishing: the scores stand)."""
    from segflow.ml.monitoring import monitor as run_monitor
    from segflow.ml.scoring import features_as_of, read_scores

    cfg = settings()
    day = parse_as_of(as_of)
    report = run_monitor(cfg, day, read_scores(cfg, day), features_as_of(cfg, day))
    if report.warnings and str(cfg.get("monitoring", "on_drift", default="warn")).lower() == "fail":
        raise RuntimeError("monitoring warnings (monitoring.on_drift = fail): " + "; ".join(report.warnings))
    return report.summary()


def write_back_latest(dates: list[str]) -> dict:
    """The write-back of a scoring run: its latest date (nothing when it had nothing to score)."""
    return write_back(max(dates)) if dates else {"skipped": "no date to score"}


def sync_serving(dates: list[str]) -> dict:
    """Load the latest published scores into the segment API's serving store and switch it (docs/serving.md)."""
    if not dates:
        return {"skipped": "no date was scored"}
    from segflow.serving.sync import sync

    return sync(settings())


def deliver_triggers() -> dict:
    """Deliver the stream's new trigger transitions of consenting users to the CRM and an activation file."""
    from segflow.activation.triggers import deliver_triggers as deliver

    return deliver(settings())


def write_back(as_of: str) -> dict:
    """Push the scores of `as_of` to the CRM and the activation export - only if it is the latest date scored:
    the CRM and activation hold the current state, which a backfilled past date must not overwrite."""
    from segflow.activation.writeback import write_back as run_write_back
    from segflow.core.engines import connect_engine, scalar

    cfg = settings()
    with connect_engine(cfg.warehouse_url) as engine:
        latest = scalar(engine, "SELECT max(as_of) FROM marts.user_scores_history")
    if latest is not None and parse_as_of(as_of) < latest:
        log.info("no write-back for %s: the CRM and the export keep the latest scores (as of %s)", as_of, latest)
        return {"as_of": as_of, "skipped": f"not the latest scored date ({latest})"}
    return asdict(run_write_back(cfg, parse_as_of(as_of)))
