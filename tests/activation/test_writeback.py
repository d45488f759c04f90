from datetime import date

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from segflow.activation.writeback import crm_rows, sync_crm, write_activation_export

AS_OF = date(2026, 9, 30)


def scored(n=6, consent=None):
    consent = consent if consent is not None else [i % 2 == 0 for i in range(n)]
    return pd.DataFrame(
        {
            "user_id": [f"C{i:07d}" for i in range(n)],
            "as_of": [AS_OF] * n,
            "persona": ["Big Spenders"] * n,
            "primary_segment": ["Loyal Customers"] * n,
            "churn_risk_band": ["low"] * n,
            "churn_probability": [0.1] * n,
            "churn_reasons": ["recency_days=120 (+0.21)"] + [None] * (n - 1),
            "clv_12m": [250.0] * n,
            "expected_orders_90d": [1.2] * n,
            "p_alive": [0.8] * n,
            "has_email_consent": consent,
            "is_crm_contact": [True] * (n - 1) + [False],
            "email_sha256": ["a" * 64] * n,
        }
    )


def _check_sync(url):
    frame = scored()
    assert sync_crm(crm_rows(frame), url) == (5, 0, 0, 0)
    assert sync_crm(crm_rows(frame), url) == (0, 0, 0, 5), "unchanged rows are not rewritten"
    changed = frame.copy()
    changed.loc[0, "churn_risk_band"] = "high"
    changed = changed.drop(index=3)
    assert sync_crm(crm_rows(changed), url) == (0, 1, 1, 3)
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = pd.read_sql(text("SELECT * FROM crm_segments ORDER BY contact_id"), conn)
    engine.dispose()
    assert list(rows["contact_id"]) == ["C0000000", "C0000001", "C0000002", "C0000004"]
    assert rows.loc[0, "churn_risk_band"] == "high"
    no_consent = rows[~rows["marketing_allowed"].astype(bool)]
    assert (
        list(no_consent["contact_id"]) == ["C0000001"]
        and no_consent[["persona", "primary_segment", "churn_risk_band"]].isna().all().all()
    )


def test_crm_sync_sqlite_upserts_changed_rows_only_and_removes_gone_users(tmp_path):
    _check_sync(f"sqlite:///{tmp_path / 'crm.sqlite'}")


@pytest.mark.postgres
def test_crm_sync_postgresql(postgres_url):
    _check_sync(postgres_url)


def test_activation_export_has_consenting_users_only(tmp_path):
    n, files = write_activation_export(scored(), tmp_path, AS_OF)
    assert n == 3 and len(files) == 2
    csv = pd.read_csv(tmp_path / f"as_of={AS_OF}" / "segments.csv")
    parquet = pd.read_parquet(tmp_path / f"as_of={AS_OF}" / "segments.parquet")
    assert list(csv["user_id"]) == list(parquet["user_id"]) == ["C0000000", "C0000002", "C0000004"]
    assert not any(c in csv.columns for c in ("email", "phone", "has_email_consent"))
    assert {"churn_reasons", "clv_12m", "expected_orders_90d", "p_alive"} <= set(csv.columns)
    assert csv.loc[0, "churn_reasons"] == "recency_days=120 (+0.21)" and csv.loc[0, "clv_12m"] == 250.0
    assert not list((tmp_path / f"as_of={AS_OF}").glob(".*.tmp")), "no temp files left behind"


@pytest.mark.parametrize(
    "hostile", ['=HYPERLINK("http://evil.example","click")', "+1+2", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
)
def test_csv_cells_that_would_run_as_formulas_are_escaped_parquet_stays_raw(tmp_path, hostile):
    import csv

    frame = scored(n=2, consent=[True, True])
    frame.loc[0, "user_id"] = hostile
    frame.loc[1, "persona"] = hostile
    frame.loc[1, "churn_probability"] = -0.0
    write_activation_export(frame, tmp_path, AS_OF)
    folder = tmp_path / f"as_of={AS_OF}"
    with open(folder / "segments.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["user_id"] == "'" + hostile and rows[1]["persona"] == "'" + hostile
    assert float(rows[1]["churn_probability"]) == 0.0, "numbers are not escaped"
    assert rows[1]["user_id"] == "C0000001", "ordinary text is untouched"
    raw = pd.read_parquet(folder / "segments.parquet")
    assert raw.loc[0, "user_id"] == hostile and raw.loc[1, "persona"] == hostile
