"""End to end: the real DAGs (segflow run -> Airflow's DAG test runner) on a tiny generated dataset."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from segflow.core.config import REPO_ROOT
from segflow.synthetic.generator import generate
from tests.conftest import AS_OF

pytestmark = pytest.mark.e2e


def run_cli(args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segflow.local.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


# A team's configuration in its own folder, outside the clone: only its own paths. The dbt project, the GX suites
# and the DAGs come from the installation.
TEAM_CONFIG = """
sources:
  crm: {url: "sqlite:///data/crm.sqlite", table: contacts, lookback_hours: 72}
  events: {path: data/events}
  transactions: {path: data/transactions}
warehouse: {path: warehouse.duckdb}
mlflow: {tracking_uri: "sqlite:///mlflow.db", artifact_root: mlartifacts}
writeback: {crm_url: "sqlite:///data/crm.sqlite", export_dir: exports}
airflow: {home: airflow}
quality: {gx_dir: gx}
# Two training snapshots instead of four: these tests are about the pipeline, not the models' quality (which
# test_model_quality.py and test_online_retail.py check with the defaults); each snapshot costs a dbt run.
churn: {training_snapshots: 2}
"""


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    generate(data, users=600, days=150, seed=21, dirty_rate=0.02, end_date=AS_OF)
    (root / "segflow.yml").write_text(TEAM_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGFLOW__")}
    env.update(SEGFLOW_CONFIG=str(root / "segflow.yml"), SEGFLOW_TASK_RETRIES="0", MPLCONFIGDIR=str(root / "mpl"))
    # dbt state that outlives a run (Cosmos's project copies do not): a rerun must not trip over it.
    env["DBT_TARGET_PATH"] = str(root / "dbt-target")
    first = run_cli(["run", "--as-of", AS_OF.isoformat()], env, cwd=root)
    assert first.returncode == 0, f"segflow run failed:\n{first.stdout[-4000:]}\n{first.stderr[-4000:]}"
    return {"root": root, "data": data, "env": env, "first": first}


def _warehouse(p):
    return duckdb.connect(str(p["root"] / "warehouse.duckdb"), read_only=True)


def test_every_task_reports_its_start_end_and_work(pipeline):
    out = pipeline["first"].stdout
    for task in (
        "extract",
        "validate_raw",
        "dbt_build",
        "validate_marts",
        "dbt_publish",
        "train_models",
        "score_users",
    ):
        assert f"· {task} …" in out and f"✓ {task} (" in out, task
    assert re.search(r"✓ extract \(\d+\.\ds\)  [\d,]+ rows loaded, [\d,]+ quarantined", out)
    assert re.search(r"✓ score_users \(\d+\.\ds\)  [\d,]+ users as of 2026-09-30", out)


def test_summary_is_printed(pipeline):
    out = pipeline["first"].stdout
    for needle in (
        "segflow_build",
        "segflow_train",
        "segflow_score",
        "Rule segments",
        "Personas",
        "Churn risk",
        "avg CLV 12m",
        "Why users are at high risk - leading reasons:",
        "Where to look next",
    ):
        assert needle in out, needle


def test_one_score_per_user_and_every_stage_published(pipeline):
    with _warehouse(pipeline) as con:
        features = con.execute(
            "SELECT count(*), count(DISTINCT user_id), min(as_of), max(as_of) FROM marts.user_features"
        ).fetchall()[0]
        scores = con.execute("SELECT count(*), count(DISTINCT user_id) FROM marts.user_scores").fetchall()[0]
        missing = con.execute(
            "SELECT count(*) FROM marts.user_features f ANTI JOIN marts.user_scores s USING (user_id)"
        ).fetchall()[0][0]
        primaries = con.execute("SELECT count(*) FROM marts.user_segments WHERE is_primary").fetchall()[0][0]
        bad_p = con.execute(
            "SELECT count(*) FROM marts.user_scores WHERE churn_probability NOT BETWEEN 0 AND 1"
        ).fetchall()[0][0]
        quality = con.execute("SELECT count(DISTINCT suite) FROM quality.validation_results").fetchall()[0][0]
        # Lifetime value for every buyer (none for prospects); reason codes for buyers at medium or high risk.
        value = con.execute("""
            SELECT count(*) FILTER (WHERE churn_probability IS NOT NULL AND clv_12m IS NULL),
                   count(*) FILTER (WHERE churn_probability IS NULL AND clv_12m IS NOT NULL),
                   count(*) FILTER (WHERE p_alive NOT BETWEEN 0 AND 1 OR clv_12m < 0 OR expected_orders_90d < 0),
                   count(*) FILTER (WHERE churn_risk_band = 'high' AND churn_reasons IS NOT NULL),
                   count(*) FILTER (WHERE churn_risk_band IN ('low', 'prospect') AND churn_reasons IS NOT NULL)
            FROM marts.user_scores""").fetchone()
        versions = con.execute(
            "SELECT DISTINCT clusterer_version, churn_model_version, clv_model_version FROM marts.user_scores"
        ).fetchall()
    assert features[0] == features[1] >= 550  # 600 contacts less the ones created after as_of, merged duplicates
    assert features[2] == features[3] == AS_OF
    assert scores[0] == scores[1] == features[0] and missing == 0
    assert primaries == features[0], "every user has exactly one primary segment"
    assert bad_p == 0
    assert value[:3] == (0, 0, 0) and value[3] > 0 and value[4] == 0, value
    assert quality == 6, "raw, marts and score suites all ran"
    assert versions == [("1", "1", "1")]


def mlflow_metrics(tracking_db: Path) -> dict[str, dict[str, float]]:
    """The metrics of each model's training run in the MLflow store `tracking_db` (a client of its own: the
    process's tracking URI, which other tests set, is left alone)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tracking_db}")
    experiment = client.get_experiment_by_name("segflow")
    return {
        run.data.tags["model"]: {k: v for k, v in run.data.metrics.items() if v == v}  # NaN: not computed
        for run in client.search_runs([experiment.experiment_id])
    }


@pytest.mark.postgres
def test_segflow_run_on_a_postgresql_warehouse(pipeline, postgres_url, tmp_path):
    """`segflow run` with `warehouse.url` on PostgreSQL: every task - extract, erasure, raw gate, dbt, marts gate,
    training, scoring, publish, write-back, monitoring - runs there (no DuckDB file appears) and gives what the same
    run gave on DuckDB: gate outcomes, marts, model references and metrics, scores, monitoring checks, the CRM table
    (already in sync: nothing to change) and the export. Publishing again does not duplicate; a failed publish
    (COPY into a temporary table, then one INSERT, in one transaction) leaves the last good scores."""
    from segflow.core.config import load_settings
    from segflow.core.engines import connect_engine
    from segflow.ml.scoring import publish_scores
    from tests.support.warehouses import assert_marts_equal

    root = tmp_path / "pg"
    # The sources as the DuckDB run read them; its CRM database holds the write-back table that run synced.
    shutil.copytree(pipeline["data"], root / "data")
    (root / "segflow.yml").write_text(
        TEAM_CONFIG.replace("warehouse: {path: warehouse.duckdb}", f'warehouse: {{url: "{postgres_url}"}}')
    )
    env = {**pipeline["env"], "SEGFLOW_CONFIG": str(root / "segflow.yml"), "DBT_TARGET_PATH": str(root / "dbt")}
    run = run_cli(["run", "--as-of", AS_OF.isoformat()], env, cwd=root)
    assert run.returncode == 0, f"segflow run failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    assert re.search(r"✓ extract .* rows loaded", run.stdout) and "CRM +0 ~0 -0" in run.stdout, run.stdout
    assert not list(root.rglob("*.duckdb")), "nothing was written to a DuckDB file"

    environ = {k: v for k, v in pipeline["env"].items() if not k.startswith("SEGFLOW_")}
    duck = load_settings(pipeline["root"] / "segflow.yml", environ=environ)
    pg = load_settings(root / "segflow.yml", environ=environ)
    checks = {
        "gates": "SELECT suite, expectation, coalesce(column_name, '') AS column_name, severity, success, "
        "unexpected_count, element_count FROM quality.validation_results",
        "references": "SELECT model_name, model_version, rows FROM ml.model_references",
        "scores": "SELECT * FROM scoring.user_scores",
        "monitoring": 'SELECT "check", model_name, model_version, subject, value, reference_value, threshold, '
        "status FROM ml.model_monitoring",
    }
    found = {}
    for settings in (duck, pg):
        with connect_engine(settings.warehouse_url) as engine:
            for name, sql in checks.items():
                frame = engine.frame(sql).drop(columns=["scored_at"], errors="ignore")
                # Sorted on every column: rows tied on a prefix (two checks of one column) have no order.
                found[name, engine.dialect] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    for name in checks:
        pd.testing.assert_frame_equal(
            found[name, "postgres"], found[name, "duckdb"], check_dtype=False, atol=1e-9, obj=name
        )
    assert found["gates", "postgres"]["suite"].isin(["raw_transactions", "marts_user_features"]).any()
    assert len(found["references", "postgres"]) >= 2 and len(found["monitoring", "postgres"]) > 10
    scores = found["scores", "postgres"]
    assert scores["churn_reasons"].isna().sum() == found["scores", "duckdb"]["churn_reasons"].isna().sum() > 0
    assert_marts_equal(duck.warehouse_path, postgres_url)
    on_duckdb, on_postgres = mlflow_metrics(pipeline["root"] / "mlflow.db"), mlflow_metrics(root / "mlflow.db")
    assert on_postgres.keys() == on_duckdb.keys() and {"user_churn", "user_lifetime_value"} <= on_duckdb.keys()
    for model, metrics in on_duckdb.items():
        assert on_postgres[model] == pytest.approx(metrics, rel=1e-6), model
    export = f"as_of={AS_OF.isoformat()}/segments.csv"
    # The same file, up to the last bit of a float (PostgreSQL sums the features in another order).
    exported = [
        pd.read_csv(folder / "exports" / export).sort_values("user_id").reset_index(drop=True)
        for folder in (root, pipeline["root"])
    ]
    pd.testing.assert_frame_equal(*exported, atol=1e-9)

    # Publishing the day's scores again (as read back) replaces them: the same rows, no duplicates.
    assert publish_scores(pg, scores, AS_OF) == publish_scores(pg, scores, AS_OF) == len(scores)
    with pytest.raises(Exception, match="integer"):
        publish_scores(pg, scores.assign(cluster_id="not a number"), AS_OF)
    with connect_engine(pg.warehouse_url) as engine:
        assert engine.fetchall("SELECT count(*) FROM scoring.user_scores") == [(len(scores),)], (
            "a rerun does not duplicate; the failed publish left the last good scores"
        )


def test_registry_holds_both_models_with_champion(pipeline):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{pipeline['root'] / 'mlflow.db'}")
    client = MlflowClient()
    for name in ("user_segments_clusterer", "user_churn", "user_lifetime_value"):
        version = client.get_model_version_by_alias(name, "champion")
        assert str(version.version) == "1"
        assert version.tags["as_of"] == AS_OF.isoformat()
        assert version.tags["promotion_decision"] == "champion"
    runs = mlflow.search_runs(experiment_names=["segflow"])
    churn_run = runs[runs["tags.model"] == "user_churn"].iloc[0]
    assert 0.5 < churn_run["metrics.holdout_roc_auc"] <= 1.0
    assert churn_run["params.holdout"].startswith("time: snapshot 2026-07-02 held out")
    for baseline in ("baseline_recency_only_roc_auc", "baseline_rfm_logistic_regression_roc_auc"):
        assert 0 < churn_run[f"metrics.{baseline}"] <= 1
    artifacts = {a.path for a in client.list_artifacts(churn_run["run_id"])}
    assert {
        "roc.png",
        "calibration.png",
        "feature_importance.png",
        "confusion_matrix.png",
        "promotion_decision.json",
        "feature_reference.json",
    } <= artifacts
    cluster_run = runs[runs["tags.model"] == "user_segments_clusterer"].iloc[0]
    artifacts = {a.path for a in client.list_artifacts(cluster_run["run_id"])}
    assert {"k_selection.png", "cluster_profile.png", "cluster_profile.json", "k_selection.json"} <= artifacts
    assert cluster_run["params.algorithm"] in ("kmeans", "minibatch_kmeans", "gaussian_mixture")
    for run in (churn_run, cluster_run):  # lineage
        assert run["tags.as_of"] == AS_OF.isoformat() and len(run["tags.git_commit"]) >= 7
        assert run["tags.data_window_end"] == AS_OF.isoformat() and run["tags.data_window_start"] <= AS_OF.isoformat()
    # The input example stored with the model is synthetic: no user's feature row.
    version = client.get_model_version_by_alias("user_churn", "champion")
    model = mlflow.models.get_model_info(f"models:/user_churn/{version.version}")
    assert model.signature is not None and model.saved_input_example_info is not None


def test_monitoring_compares_features_with_the_training_reference(pipeline):
    import mlflow

    with _warehouse(pipeline) as con:
        rows = con.execute(
            """SELECT "check", model_name, count(*), count(*) FILTER (WHERE value IS NULL)
                              FROM ml.model_monitoring WHERE as_of = ? GROUP BY ALL""",
            [AS_OF],
        ).fetchall()
    checks = {(c, m): n for c, m, n, nulls in rows}
    assert checks[("feature_psi", "user_churn")] >= 10 and checks[("feature_psi", "user_segments_clusterer")] >= 3
    assert ("persona_share", "user_segments_clusterer") in checks and ("score_mean", "user_churn") in checks
    mlflow.set_tracking_uri(f"sqlite:///{pipeline['root'] / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["segflow"])
    assert (runs["tags.model"] == "monitoring").any()


def test_crm_writeback_and_export_respect_consent(pipeline):
    with _warehouse(pipeline) as con:
        features = con.execute("SELECT user_id, has_email_consent, is_crm_contact FROM marts.user_features").df()
    with sqlite3.connect(pipeline["data"] / "crm.sqlite") as crm:
        synced = pd.read_sql("SELECT * FROM crm_segments", crm)
    assert len(synced) == int(features["is_crm_contact"].sum())
    merged = synced.merge(features, left_on="contact_id", right_on="user_id")
    assert (merged["marketing_allowed"].astype(bool) == merged["has_email_consent"]).all()
    assert merged.loc[~merged["has_email_consent"], "persona"].isna().all()
    assert merged.loc[merged["has_email_consent"], "persona"].notna().all()
    export = pd.read_parquet(pipeline["root"] / "exports" / f"as_of={AS_OF}" / "segments.parquet")
    consenting = set(features.loc[features["has_email_consent"], "user_id"])
    assert set(export["user_id"]) == consenting
    assert "email" not in export.columns
    # Malformed emails have no matching key; every key present is a SHA-256 hex digest, never clear text.
    hashes = export["email_sha256"].dropna()
    assert len(hashes) > 0.9 * len(export) and hashes.str.fullmatch(r"[0-9a-f]{64}").all()


def test_rerun_is_idempotent(pipeline):
    with _warehouse(pipeline) as con:
        before = con.execute("SELECT count(*) FROM raw.transactions").fetchall()[0][0]
    second = run_cli(["run", "--as-of", AS_OF.isoformat(), "--retrain", "never"], pipeline["env"])
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    with _warehouse(pipeline) as con:
        assert con.execute("SELECT count(*) FROM raw.transactions").fetchall()[0][0] == before
        hist = con.execute(
            "SELECT count(*), count(DISTINCT user_id) FROM marts.user_scores_history WHERE as_of = ?", [AS_OF]
        ).fetchall()[0]
        fh = con.execute(
            "SELECT count(*), count(DISTINCT user_id) FROM marts.user_features_history WHERE as_of = ?", [AS_OF]
        ).fetchall()[0]
    assert hist[0] == hist[1] and fh[0] == fh[1]
    with sqlite3.connect(pipeline["data"] / "crm.sqlite") as crm:
        n, distinct = crm.execute("SELECT count(*), count(DISTINCT contact_id) FROM crm_segments").fetchone()
    assert n == distinct > 0


def test_data_docs_show_the_latest_validations(pipeline):
    index = pipeline["root"] / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    html = index.read_text()
    for suite in (
        "raw_transactions",
        "raw_events",
        "raw_crm_contacts",
        "marts_user_features",
        "marts_user_segments",
        "marts_user_scores",
    ):
        assert suite in html, suite


def test_critical_quality_failure_blocks_publishing(pipeline, tmp_path):
    """A critical expectation failing on the audit candidates stops the build before dbt publishes:
    marts and scores keep their last good version, and the failure names suite, expectation and value."""
    import json
    import shutil
    from datetime import timedelta

    with _warehouse(pipeline) as con:
        features_before = con.execute("SELECT count(*), max(as_of) FROM marts.user_features").fetchall()[0]
        scores_before = con.execute("SELECT count(*), max(as_of), max(scored_at) FROM marts.user_scores").fetchall()[0]
    suites = tmp_path / "expectations"
    shutil.copytree(REPO_ROOT / "expectations", suites)
    doc = json.loads((suites / "marts_user_features.json").read_text())
    doc["expectations"].append(
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"max_value": 10}, "meta": {"severity": "critical"}}
    )
    (suites / "marts_user_features.json").write_text(json.dumps(doc))
    day_before = AS_OF - timedelta(days=1)
    env = {**pipeline["env"], "SEGFLOW__QUALITY__EXPECTATIONS_DIR": str(suites)}
    failed = run_cli(["run", "--as-of", day_before.isoformat(), "--retrain", "never"], env)
    assert failed.returncode == 1
    assert "segflow_build failed" in failed.stdout and "validate_marts" in failed.stdout
    log = (pipeline["root"] / "airflow" / "logs" / f"segflow-run-{day_before}.log").read_text()
    assert "[marts_user_features] expect_table_row_count_to_be_between failed (critical): observed" in log
    with _warehouse(pipeline) as con:
        assert con.execute("SELECT count(*), max(as_of) FROM marts.user_features").fetchall()[0] == features_before
        assert (
            con.execute("SELECT count(*), max(as_of), max(scored_at) FROM marts.user_scores").fetchall()[0]
            == scores_before
        )
        # The candidate was built and judged, just not published; it stays for inspection.
        assert (
            con.execute(f"SELECT max(as_of) FROM audit_{day_before:%Y%m%d}.audit_user_features").fetchall()[0][0]
            == day_before
        )
        assert (
            con.execute("SELECT count(*) FROM marts.user_features_history WHERE as_of = ?", [day_before]).fetchall()[0][
                0
            ]
            == 0
        )


def test_a_retrained_model_that_is_no_better_stays_challenger(pipeline):
    """Retraining on the same data (the on-demand training DAG's task): the new versions must not replace the
    champions; they get the `challenger` alias with the reason logged."""
    import mlflow
    from mlflow import MlflowClient

    code = f"from segflow.airflow import callables; print(callables.train('{AS_OF}'))"
    result = subprocess.run(
        [sys.executable, "-c", code], env=pipeline["env"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{pipeline['root'] / 'mlflow.db'}")
    client = MlflowClient()
    for name in ("user_segments_clusterer", "user_churn", "user_lifetime_value"):
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        challenger = client.get_model_version_by_alias(name, "challenger")
        assert str(challenger.version) == "2"
        assert challenger.tags["promotion_decision"] == "challenger"
        assert "does not beat champion v1" in challenger.tags["promotion_reason"]


def test_a_backfill_scores_an_earlier_date_as_a_fresh_run_of_it_does(pipeline, tmp_path):
    """As-of model selection: after the later date was run (and its models trained), running an earlier date on
    the same stores trains models as of that date - the later champions learnt from its future - and publishes
    exactly the scores a fresh run of the earlier date alone publishes. The later models keep @champion."""
    import shutil
    from datetime import timedelta

    import mlflow
    from mlflow import MlflowClient

    earlier = AS_OF - timedelta(days=14)
    backfill = run_cli(["run", "--as-of", earlier.isoformat()], pipeline["env"], cwd=pipeline["root"])
    assert backfill.returncode == 0, backfill.stdout[-3000:] + backfill.stderr[-3000:]
    assert "→ segflow_train" in backfill.stdout, "no model was trained on data up to the earlier date: it trains one"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copytree(pipeline["data"], fresh / "data")
    (fresh / "segflow.yml").write_text(TEAM_CONFIG)
    env = {
        **pipeline["env"],
        "SEGFLOW_CONFIG": str(fresh / "segflow.yml"),
        "DBT_TARGET_PATH": str(fresh / "dbt-target"),
    }
    alone = run_cli(["run", "--as-of", earlier.isoformat()], env, cwd=fresh)
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]

    versions = ["clusterer_version", "churn_model_version", "clv_model_version", "scored_at"]

    def scores(root):
        with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
            frame = con.execute(
                "SELECT * FROM marts.user_scores_history WHERE as_of = ? ORDER BY user_id", [earlier]
            ).df()
        return frame.drop(columns=versions), frame[versions[:3]].iloc[0].to_dict()

    backfilled, used = scores(pipeline["root"])
    expected, _ = scores(fresh)
    assert len(backfilled) > 500
    pd.testing.assert_frame_equal(backfilled, expected, check_exact=False, rtol=1e-9)
    mlflow.set_tracking_uri(f"sqlite:///{pipeline['root'] / 'mlflow.db'}")
    client = MlflowClient()
    for name, column in (
        ("user_segments_clusterer", "clusterer_version"),
        ("user_churn", "churn_model_version"),
        ("user_lifetime_value", "clv_model_version"),
    ):
        scorer = client.get_model_version(name, used[column])
        assert scorer.tags["as_of"] == earlier.isoformat(), f"{name} v{used[column]} learnt from later data"
        assert client.get_model_version_by_alias(name, "champion").tags["as_of"] == AS_OF.isoformat()
    with _warehouse(pipeline) as con:
        assert con.execute("SELECT max(as_of) FROM marts.user_scores").fetchone()[0] == AS_OF


def test_the_segment_api_serves_what_was_published(pipeline, redis_url):
    """The scoring run synced the serving snapshot: `segflow serve` answers every user's profile with the
    memberships of marts.user_segments and the scores of marts.user_scores; a lookup by anonymous id resolves
    through the identity graph; the same version loaded into Redis answers the same."""
    import json
    import urllib.request
    import uuid

    from fastapi.testclient import TestClient

    from segflow.core.config import load_settings
    from segflow.serving.api import create_app
    from segflow.serving.store import RedisStore
    from segflow.serving.sync import sync
    from tests.support.services import _free_port

    with _warehouse(pipeline) as con:
        segments = con.execute(
            "SELECT user_id, segment_name, is_primary, evidence FROM marts.user_segments ORDER BY ALL"
        ).fetchall()
        scores = con.execute(
            "SELECT user_id, persona, cluster_id, churn_probability, churn_risk_band, clv_12m, churn_model_version "
            "FROM marts.user_scores"
        ).fetchall()
        consents = con.execute("SELECT user_id, has_email_consent FROM marts.user_features").fetchall()
        anonymous, owner = con.execute(
            "SELECT identifier, user_id FROM marts.user_identity_links WHERE identifier_type = 'anonymous_id' "
            "ORDER BY identifier LIMIT 1"
        ).fetchone()
    assert (pipeline["root"] / "serving" / "CURRENT").exists(), "the scoring run syncs the serving store"
    key = run_cli(["api-key", "create", "--name", "e2e"], pipeline["env"], cwd=pipeline["root"])
    assert key.returncode == 0, key.stderr
    key = key.stdout.strip()
    settings = load_settings(pipeline["root"] / "segflow.yml", environ=pipeline["env"])

    def served(store=None) -> dict[str, dict]:
        api = TestClient(create_app(settings, store=store))
        users = [row[0] for row in scores]
        profiles: dict[str, dict] = {}
        for start in range(0, len(users), 100):
            response = api.post(
                "/v1/profiles:batch", json={"ids": users[start : start + 100]}, headers={"X-API-Key": key}
            )
            assert response.status_code == 200 and not response.json()["not_found"]
            profiles.update(response.json()["profiles"])
        return profiles

    profiles = served()
    memberships = {
        (p["user_id"], m["name"], m["is_primary"], json.dumps(m["evidence"], sort_keys=True))
        for p in profiles.values()
        for m in p["segments"]
    }
    assert memberships == {
        (u, s, bool(primary), json.dumps(json.loads(e), sort_keys=True)) for u, s, primary, e in segments
    }
    # Consent: a profile carries the user's marketing consent; /members lists exactly the consenting members, and
    # marketable_size counts them.
    consent = dict(consents)
    assert all(doc["consent"]["marketing"] == bool(consent.get(user)) for user, doc in profiles.items())
    api = TestClient(create_app(settings))
    listed = api.get("/v1/segments", headers={"X-API-Key": key}).json()["segments"]
    for segment in listed:
        members, cursor = [], None
        while True:
            page = api.get(
                f"/v1/segments/{segment['name']}/members",
                params={"cursor": cursor} if cursor else {},
                headers={"X-API-Key": key},
            ).json()
            members += page["members"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        expected = sorted({u for u, s, _, _ in segments if s == segment["name"] and consent.get(u)})
        assert members == expected and segment["marketable_size"] == len(expected), segment["name"]
    for user, persona, cluster, probability, band, clv, version in scores:
        doc = profiles[user]
        assert (doc["persona"]["name"], doc["persona"]["cluster_id"], doc["churn"]["risk_band"]) == (
            persona,
            cluster,
            band,
        )
        assert doc["churn"]["probability"] == (None if probability != probability else probability)
        assert (doc["lifetime_value"] or {}).get("clv_12m") == (None if clv != clv else clv)
        assert doc["model_versions"]["churn"] == version
    # Redis: the same version, loaded and switched, answers the same documents.
    prefix = f"segflow-e2e-{uuid.uuid4().hex[:8]}"
    redis_env = {**pipeline["env"], "SEGFLOW__SERVING__URL": redis_url, "SEGFLOW__SERVING__KEY_PREFIX": prefix}
    result = sync(load_settings(pipeline["root"] / "segflow.yml", environ=redis_env))
    store = RedisStore(redis_url, prefix)
    try:
        assert result["redis"]["profiles"] == len(scores)
        from_redis = served(store)
        assert {u: {**d, "serving_version": None} for u, d in from_redis.items()} == {
            u: {**d, "serving_version": None} for u, d in profiles.items()
        }
    finally:
        store.client.delete(*store.client.scan_iter(f"{prefix}:*"))
    # The command a website's developer runs: `segflow serve`, then a lookup by anonymous id.
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "segflow.local.cli", "serve", "--port", str(port)],
        env=pipeline["env"],
        cwd=pipeline["root"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        from tests.e2e.test_celery_stack import wait_for_http

        wait_for_http(f"http://127.0.0.1:{port}/readyz", server, timeout=60)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/profiles/{anonymous}", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["user_id"] == owner
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    assert anonymous not in log and key not in log, "request logs keep ids and keys out"


def test_replaying_a_day_through_the_stream_gives_the_triggers_dbt_computes(pipeline, redis_url):
    """One truth with batch: the run's last day of events, published out of order (within the allowed lateness)
    to the stream and consumed by `segflow stream`, yields exactly the trigger transitions the dbt model
    trigger_transitions computes over the same day (`segflow stream reconcile`), for every rule. The events of the
    two days before feed both, as they would a stream running across midnight."""
    import json
    import random
    import uuid
    from datetime import UTC, datetime, timedelta

    from segflow.core.config import load_settings
    from segflow.realtime.consumer import StreamConsumer, StreamKeys, redis_client
    from segflow.realtime.engine import to_us
    from segflow.realtime.replay import context_start, day_events, reconcile, replay, stream_transitions
    from segflow.realtime.rules import load_rules, parse_rules
    from segflow.serving.store import drop_prefix

    prefix = f"segflow-e2e-{uuid.uuid4().hex[:8]}"
    env = {
        **pipeline["env"],
        "SEGFLOW__STREAM__URL": redis_url,
        "SEGFLOW__STREAM__KEY_PREFIX": prefix,
        "SEGFLOW__STREAM__CLOCK": "events",
        "SEGFLOW__STREAM__ALLOWED_LATENESS_SECONDS": "120",
        # The batch drop goes elsewhere: this test must not add files to the run's events folder.
        "SEGFLOW__STREAM__DROP_DIR": str(pipeline["root"] / "stream-drop"),
    }
    settings = load_settings(pipeline["root"] / "segflow.yml", environ=env)
    client = redis_client(redis_url)
    keys = StreamKeys(prefix)
    # One day of 600 generated users is too thin for every default rule to fire; looser variants of each kind join
    # them, in the seed's table (what dbt reads) and in the consumer's rules alike.
    extra = [
        {
            "trigger_name": "browse_day",
            "kind": "repeat_without",
            "enabled": "true",
            "window_minutes": "1440",
            "threshold": "2",
            "event_types": "product_view|search",
            "cancel_event_types": "purchase",
        },
        {"trigger_name": "points_hour", "kind": "points", "enabled": "true", "window_minutes": "60", "threshold": "2"},
        {
            "trigger_name": "viewed_no_cart",
            "kind": "absence",
            "enabled": "true",
            "window_minutes": "20",
            "event_types": "product_view",
            "cancel_event_types": "add_to_cart|purchase",
            "active_minutes": "90",
        },
    ]
    rules = load_rules() + parse_rules(extra)
    with duckdb.connect(str(pipeline["root"] / "warehouse.duckdb")) as con:
        for rule in extra:
            con.execute(
                "INSERT INTO reference.trigger_rules (trigger_name, kind, enabled, window_minutes, threshold, "
                "event_types, cancel_event_types, active_minutes) VALUES (?, ?, true, ?, ?, ?, ?, ?)",
                [
                    rule["trigger_name"],
                    rule["kind"],
                    int(rule["window_minutes"]),
                    rule.get("threshold"),
                    rule.get("event_types"),
                    rule.get("cancel_event_types"),
                    rule.get("active_minutes"),
                ],
            )
    try:
        # The day and the span before it whose events decide its transitions (what the dbt model reads too).
        rows = day_events(pipeline["data"] / "events", AS_OF, since=context_start(AS_OF, rules))
        rng = random.Random(5)
        # Arrival order: each event up to 100 s late (within the allowed 120 s).
        shuffled = sorted(
            rows,
            key=lambda r: (
                datetime.fromisoformat(r["event_ts"].replace("Z", "+00:00")).timestamp() + rng.uniform(0, 100)
            ),
        )
        shuffled.insert(len(shuffled) // 2, shuffled[10])  # and one re-sent
        assert replay(client, keys, shuffled) == len(rows) + 1
        consumer = StreamConsumer(settings, client=client, rules=rules)
        consumer.ensure_group()
        while consumer.counters.read < len(shuffled):
            consumer.step(block_ms=0)
        day_end = to_us(datetime.combine(AS_OF + timedelta(days=1), datetime.min.time(), UTC)) - 1
        consumer.step(block_ms=0, until=day_end)
        assert consumer.counters.late == 0 and consumer.counters.duplicates == 1
        # The generator's dirty rows: dead-lettered for the reasons the batch extract quarantined them for.
        ids = {r["event_id"] for r in rows}
        with _warehouse(pipeline) as con:
            quarantined = con.execute(
                "SELECT reason, raw_record FROM raw.quarantine WHERE source = 'events' ORDER BY reason"
            ).fetchall()
        expected = sorted(
            reason for reason, raw in quarantined if raw.startswith("{") and json.loads(raw).get("event_id") in ids
        )
        assert expected and sorted(f["reason"] for _, f in client.xrange(keys.dead)) == expected
        # `return` rules: the stream read the profile published for AS_OF (the run above), so dbt reads that one.
        result = reconcile(settings, client, keys, AS_OF, profile_as_of=AS_OF)
        assert result["only_batch"] == [] and result["only_stream"] == [], result
        # Every kind of rule took part on the day, entering and leaving.
        kind = {rule.name: rule.kind for rule in rules}
        on_day = {(kind[rule], change) for rule, _, change, _, _ in stream_transitions(client, keys, AS_OF)}
        assert result["stream"] >= 50, result["stream"]
        assert on_day == {
            (k, c) for k in ("points", "repeat_without", "absence", "return") for c in ("entered", "exited")
        }
    finally:
        with duckdb.connect(str(pipeline["root"] / "warehouse.duckdb")) as con:
            con.execute(
                "DELETE FROM reference.trigger_rules WHERE trigger_name IN (SELECT unnest(?))",
                [[r["trigger_name"] for r in extra]],
            )
        drop_prefix(client, prefix)


def test_an_erasure_request_forgets_the_person_everywhere(pipeline):
    """Runs last: asks to forget a consenting customer with orders, events and a stitched device, by email, then
    reruns the day. Nothing holds them any more - raw, staging, every history, scores, identity links, the CRM
    table, the new export - and the log keeps hashes only. A second run changes nothing more."""
    import json

    with _warehouse(pipeline) as con:
        person, email = con.execute("""
            SELECT c.contact_id, c.email FROM raw.crm_contacts c
            JOIN marts.user_features f ON f.user_id = c.contact_id
            WHERE f.has_email_consent AND f.lifetime_orders > 0 AND f.sessions_30d > 0
              AND EXISTS (SELECT 1 FROM marts.user_identity_links l WHERE l.user_id = c.contact_id
                          AND l.identifier_type = 'anonymous_id')
            ORDER BY c.contact_id LIMIT 1""").fetchone()
        anonymous = [
            r[0]
            for r in con.execute(
                "SELECT identifier FROM marts.user_identity_links WHERE user_id = ? "
                "AND identifier_type = 'anonymous_id'",
                [person],
            ).fetchall()
        ]
    asked = run_cli(["erase", "--email", email.upper()], pipeline["env"], cwd=pipeline["root"])
    assert asked.returncode == 0, asked.stderr
    rerun = run_cli(["run", "--as-of", AS_OF.isoformat(), "--retrain", "never"], pipeline["env"], cwd=pipeline["root"])
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "✓ apply_erasures" in rerun.stdout
    identifiers = [person, email.lower(), *anonymous]
    with _warehouse(pipeline) as con:
        for schema, table, column in con.execute("""
                SELECT table_schema, table_name, column_name FROM information_schema.columns
                WHERE data_type = 'VARCHAR' AND table_schema NOT IN ('reference', 'information_schema', 'pg_catalog')
                  AND table_name NOT IN ('erasure_log')""").fetchall():
            hits = con.execute(
                f'SELECT count(*) FROM "{schema}"."{table}" WHERE lower("{column}") IN (SELECT unnest(?::VARCHAR[]))',
                [identifiers],
            ).fetchone()[0]
            assert hits == 0, f"{schema}.{table}.{column} still holds the person"
        (log,) = con.execute("SELECT CAST(erasure_log AS VARCHAR) FROM raw.erasure_log AS erasure_log").fetchone()
        erased = json.loads(con.execute("SELECT rows_erased FROM raw.erasure_log").fetchone()[0])
    assert email.lower() not in log.lower() and person not in log, "the record holds hashes only"
    assert erased.get("raw.crm_contacts", 0) >= 1 and erased.get("raw.events", 0) >= 1
    with sqlite3.connect(pipeline["data"] / "crm.sqlite") as crm:
        assert crm.execute("SELECT count(*) FROM crm_segments WHERE contact_id = ?", [person]).fetchone()[0] == 0
    export = pd.read_csv(pipeline["root"] / "exports" / f"as_of={AS_OF}" / "segments.csv", dtype=str)
    assert person not in set(export["user_id"])
    # The segment API: the version the rerun synced lacks them, and the replaced versions are gone at once (an
    # erasure outranks the grace period).
    snapshots = sorted((pipeline["root"] / "serving").glob("snapshot-*.sqlite"))
    current = (pipeline["root"] / "serving" / "CURRENT").read_text().strip()
    assert [s.name for s in snapshots] == [f"snapshot-{current}.sqlite"]
    with sqlite3.connect(snapshots[0]) as served:
        assert served.execute("SELECT count(*) FROM profiles WHERE user_id = ?", [person]).fetchone()[0] == 0
        assert served.execute("SELECT count(*) FROM identifiers WHERE user_id = ?", [person]).fetchone()[0] == 0
        assert served.execute("SELECT count(*) FROM members WHERE user_id = ?", [person]).fetchone()[0] == 0
    # The source still holds the contact: the next run deletes what it loads again, and nothing else.
    again = run_cli(["run", "--as-of", AS_OF.isoformat(), "--retrain", "never"], pipeline["env"], cwd=pipeline["root"])
    assert again.returncode == 0, again.stdout[-3000:]
    with _warehouse(pipeline) as con:
        assert con.execute("SELECT count(*) FROM raw.crm_contacts WHERE contact_id = ?", [person]).fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM marts.user_features WHERE user_id = ?", [person]).fetchone()[0] == 0
