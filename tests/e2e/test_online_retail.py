"""The UCI Online Retail dataset (541,909 real order lines, transactions only) through the whole pipeline
with the shipped mapping config: examples/online_retail/segflow.yml."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

from segflow.core.config import REPO_ROOT, load_settings
from tests.e2e.test_pipeline import run_cli
from tests.support.services import need

pytestmark = pytest.mark.e2e
CONFIG = REPO_ROOT / "examples" / "online_retail" / "segflow.yml"
FETCHED = REPO_ROOT / "data" / "online_retail" / "online_retail.parquet"  # where `segflow datasets fetch` puts it


def dataset_path() -> Path | None:
    """The dataset, offline first: SEGFLOW_ONLINE_RETAIL_PATH, a copy in the workspace's shared folder beside the
    clone, else the fetched copy. None when there is none."""
    candidates = [
        os.environ.get("SEGFLOW_ONLINE_RETAIL_PATH"),
        REPO_ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.parquet",
        FETCHED,
    ]
    return next((Path(c).resolve() for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def retail(tmp_path_factory):
    dataset = dataset_path()
    need(
        dataset is not None,
        "the UCI Online Retail dataset is not here: run `segflow datasets fetch online-retail` "
        "(or set SEGFLOW_ONLINE_RETAIL_PATH to a copy)",
    )
    root = tmp_path_factory.mktemp("online_retail")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEGFLOW__")},
        "SEGFLOW__WAREHOUSE__PATH": str(root / "warehouse.duckdb"),
        "SEGFLOW__MLFLOW__TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "SEGFLOW__MLFLOW__ARTIFACT_ROOT": str(root / "mlartifacts"),
        "SEGFLOW__WRITEBACK__EXPORT_DIR": str(root / "exports"),
        "SEGFLOW__QUALITY__GX_DIR": str(root / "gx"),
        "SEGFLOW__AIRFLOW__HOME": str(root / "airflow"),
        "SEGFLOW__SERVING__SNAPSHOT_DIR": str(root / "serving"),
        "SEGFLOW_TASK_RETRIES": "0",
        "MPLCONFIGDIR": str(root / "mpl"),
        "SEGFLOW_ONLINE_RETAIL_PATH": str(dataset),
    }
    done = run_cli(["run", "--config", str(CONFIG), "--as-of", "2011-12-10"], env)
    assert done.returncode == 0, f"segflow run failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return {"root": root, "stdout": done.stdout, "con": duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)}


def _one(retail, sql):
    return retail["con"].execute(sql).fetchall()


def test_the_example_config_points_at_the_fetched_dataset_by_default():
    settings = load_settings(CONFIG, environ={})
    assert Path(settings.raw["sources"]["transactions"]["path"]) == FETCHED
    moved = load_settings(CONFIG, environ={"SEGFLOW_ONLINE_RETAIL_PATH": "/data/retail.parquet"})
    assert moved.raw["sources"]["transactions"]["path"] == "/data/retail.parquet"
    assert set(settings.raw["sources"]) == {"transactions"}, "no generated-data sources leak in"


def test_every_row_is_loaded_or_quarantined_for_a_reason(retail):
    assert _one(retail, "SELECT sum(rows_in), sum(rows_loaded), sum(rows_quarantined) FROM raw.load_audit") == [
        (541_909, 406_829, 135_080)
    ]
    # The only rows refused are those without a customer: nobody to attribute them to.
    assert _one(retail, "SELECT column_name, reason, count(*) FROM raw.quarantine GROUP BY ALL") == [
        ("customer_ref (from CustomerID)", "missing required value", 135_080)
    ]


def test_real_defects_are_treated_as_a_user_expects(retail):
    lines = dict(
        ((s, t), n)
        for s, t, n in _one(
            retail, "SELECT status, line_type, count(*) FROM staging.stg_shop__transactions GROUP BY ALL"
        )
    )
    assert lines[("cancelled", "product")] > 8000, "C invoices are cancellations"
    assert lines[("completed", "fee")] > 1000, "postage and fees are recognised"
    # Cancelled invoices and orders without product lines are never purchases.
    purchased = _one(retail, "SELECT sum(lifetime_orders) FROM marts.user_features")[0][0]
    product_invoices = _one(
        retail,
        """SELECT count(DISTINCT order_id) FROM staging.stg_shop__transactions
                                       WHERE status = 'completed' AND line_type = 'product'""",
    )[0][0]
    assert 0 < purchased <= product_invoices
    assert _one(retail, "SELECT count(*) FROM marts.user_features WHERE lifetime_spend < 0") == [(0,)]
    # Identical lines exported twice count once.
    assert _one(
        retail, "SELECT count(*) - count(DISTINCT order_id || '|' || line_id) FROM staging.stg_shop__transactions"
    ) == [(0,)]


def test_transactions_only_features_segments_and_scores(retail):
    assert _one(retail, "SELECT count(*), count(DISTINCT user_id) FROM marts.user_features") == [(4372, 4372)]
    # RFM exists; engagement features are absent (null), not invented zeros.
    assert _one(
        retail,
        """SELECT count(*) FILTER (WHERE recency_score IS NULL AND frequency_365d > 0),
                                  count(engagement_score), count(sessions_30d), count(intent_score_30d)
                           FROM marts.user_features""",
    ) == [(0, 0, 0, 0)]
    assert _one(retail, "SELECT count(DISTINCT rfm_label) >= 5 FROM marts.user_features") == [(True,)]
    segments = dict(_one(retail, "SELECT segment_name, count(*) FROM marts.user_segments GROUP BY 1"))
    assert {"Loyal Customers", "At-Risk"} <= set(segments)
    assert _one(
        retail,
        """SELECT count(*), count(DISTINCT cluster_id) > 1, count(churn_probability) > 4000
                           FROM marts.user_scores""",
    ) == [(4372, True, True)]
    assert "4,372 users scored as of 2011-12-10" in retail["stdout"]
