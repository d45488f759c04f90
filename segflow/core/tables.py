"""The warehouse tables segflow writes from Python, outside dbt: their one definition.

Each is declared as a dbt source (dbt_project/models/staging/_segflow__sources.yml), so dbt's lineage, docs and
exposures show what reads them; user-facing outputs are dbt models on top (marts.user_scores_history and
marts.user_scores over scoring.user_scores). The raw layer's tables belong to the extract
(segflow.extract.loader), derived from the dataset contracts.

`ensure_output_tables` runs at the start of every build (from the extract), so the dbt models over these
tables always find them, and before each write.
"""

from __future__ import annotations

SCORES_TABLE = "scoring.user_scores"
VALIDATION_RESULTS_TABLE = "quality.validation_results"
MONITORING_TABLE = "ml.model_monitoring"
MODEL_REFERENCES_TABLE = "ml.model_references"

# Every column once; a warehouse created by an older segflow gains the newer ones (empty for past dates).
SCORES_COLUMNS = {
    "user_id": "VARCHAR",
    "as_of": "DATE",
    "cluster_id": "INTEGER",
    "persona": "VARCHAR",
    "churn_probability": "DOUBLE",
    "churn_risk_band": "VARCHAR",
    "churn_reasons": "VARCHAR",
    "expected_orders_90d": "DOUBLE",
    "p_alive": "DOUBLE",
    "clv_12m": "DOUBLE",
    "primary_segment": "VARCHAR",
    "clusterer_version": "VARCHAR",
    "churn_model_version": "VARCHAR",
    "clv_model_version": "VARCHAR",
    "scored_at": "TIMESTAMP",
}
SCORES_DDL = f"""
CREATE SCHEMA IF NOT EXISTS scoring;
CREATE TABLE IF NOT EXISTS {SCORES_TABLE} ({", ".join(f"{c} {t}" for c, t in SCORES_COLUMNS.items())});
"""

VALIDATION_RESULTS_DDL = """
CREATE SCHEMA IF NOT EXISTS quality;
CREATE TABLE IF NOT EXISTS quality.validation_results (
    run_id VARCHAR, as_of DATE, suite VARCHAR, expectation VARCHAR, column_name VARCHAR, severity VARCHAR,
    success BOOLEAN, observed_value VARCHAR, unexpected_count BIGINT, element_count BIGINT,
    unexpected_sample VARCHAR, validated_at TIMESTAMP);
"""

MONITORING_DDL = """
CREATE SCHEMA IF NOT EXISTS ml;
CREATE TABLE IF NOT EXISTS ml.model_references (
    model_name VARCHAR, model_version VARCHAR, rows BIGINT, reference JSON, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS ml.model_monitoring (
    as_of DATE, "check" VARCHAR, model_name VARCHAR, model_version VARCHAR, subject VARCHAR, value DOUBLE,
    reference_value DOUBLE, threshold DOUBLE, status VARCHAR, computed_at TIMESTAMP);
"""

OUTPUT_DDL = (SCORES_DDL, VALIDATION_RESULTS_DDL, MONITORING_DDL)


def ensure_output_tables(con) -> None:
    """Create every Python-written output table that does not exist yet (idempotent).

    Args:
        con: a DuckDB connection or a segflow.core.engines engine (any warehouse engine).
    """
    from segflow.core.engines import DuckDBEngine

    engine = con if hasattr(con, "dialect") else DuckDBEngine(con)
    for ddl in OUTPUT_DDL:
        engine.execute(ddl)
    for column, kind in SCORES_COLUMNS.items():
        engine.execute(f"ALTER TABLE {SCORES_TABLE} ADD COLUMN IF NOT EXISTS {column} {kind}")
    _migrate_scores(engine)


def _migrate_scores(engine) -> None:
    """Warehouses of segflow <= 0.1 kept the score history as a Python-written marts table; dbt now owns
    marts.user_scores(_history) as views over scoring.user_scores. Move the rows once, then let dbt create its
    views (it refuses to replace a table it does not own)."""
    from segflow.core.engines import scalar

    kinds = dict(
        engine.fetchall(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'marts' "
            "AND table_name IN ('user_scores_history', 'user_scores')"
        )
    )
    if kinds.get("user_scores_history") != "BASE TABLE":
        return
    if not scalar(engine, f"SELECT count(*) FROM {SCORES_TABLE}"):
        old = engine.column_types("SELECT * FROM marts.user_scores_history")
        columns = ", ".join(c for c in SCORES_COLUMNS if c in old)  # the newer columns stay empty for those dates
        engine.execute(f"INSERT INTO {SCORES_TABLE} ({columns}) SELECT {columns} FROM marts.user_scores_history")
    engine.execute("DROP TABLE marts.user_scores_history")
    if kinds.get("user_scores") == "BASE TABLE":
        engine.execute("DROP TABLE marts.user_scores")
