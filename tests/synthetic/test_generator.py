import hashlib
import json
import sqlite3

import pandas as pd
import pytest

from segflow.synthetic.generator import PERSONA_NAMES, generate
from tests.conftest import AS_OF


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".csv", ".jsonl"):
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_data_different_seed_different_data(tmp_path):
    a = generate(tmp_path / "a", users=200, days=20, seed=5, end_date=AS_OF)
    b = generate(tmp_path / "b", users=200, days=20, seed=5, end_date=AS_OF)
    generate(tmp_path / "c", users=200, days=20, seed=6, end_date=AS_OF)
    assert (a.events, a.orders) == (b.events, b.orders)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    gt_a, gt_b = (
        pd.read_parquet(tmp_path / "a/ground_truth.parquet"),
        pd.read_parquet(tmp_path / "b/ground_truth.parquet"),
    )
    pd.testing.assert_frame_equal(gt_a, gt_b)


def test_activity_scales_thin_out_events_and_orders(tmp_path):
    base = generate(tmp_path / "base", users=3000, days=60, seed=3, end_date=AS_OF)
    thin = generate(tmp_path / "thin", users=3000, days=60, seed=3, end_date=AS_OF, event_scale=0.3, purchase_scale=0.5)
    assert 0.2 < thin.events / base.events < 0.4, (thin.events, base.events)
    assert 0.3 < thin.orders / base.orders < 0.8, (thin.orders, base.orders)
    manifest = json.loads((tmp_path / "thin" / "manifest.json").read_text())
    assert (manifest["event_scale"], manifest["purchase_scale"]) == (0.3, 0.5)
    # The ground truth follows the scaled hazard: P(no purchase in H days) = p ** purchase_scale, higher for s < 1.
    p_base = pd.read_parquet(tmp_path / "base/ground_truth.parquet")["churn_probability"].mean()
    p_thin = pd.read_parquet(tmp_path / "thin/ground_truth.parquet")["churn_probability"].mean()
    assert p_thin > p_base
    with pytest.raises(ValueError, match="event_scale and purchase_scale must be positive"):
        generate(tmp_path / "bad", users=10, days=2, event_scale=0)


def test_layout_ground_truth_and_crm(small_dataset):
    manifest = json.loads((small_dataset / "manifest.json").read_text())
    assert manifest["end_date"] == AS_OF.isoformat()
    assert len(list((small_dataset / "events").glob("*.jsonl"))) == 120
    assert len(list((small_dataset / "transactions").glob("*.csv"))) == 120
    truth = pd.read_parquet(small_dataset / "ground_truth.parquet")
    assert list(truth.columns) == ["contact_id", "persona", "churn_probability", "churned"]
    assert truth["churn_probability"].between(0, 1).all()
    assert set(truth["persona"]) == set(PERSONA_NAMES) and len(PERSONA_NAMES) >= 5
    # Personas differ in their true churn risk (the hazard depends on behaviour).
    by_persona = truth.groupby("persona")["churn_probability"].mean()
    assert by_persona.max() - by_persona.min() > 0.3
    with sqlite3.connect(small_dataset / "crm.sqlite") as con:
        cols = [r[1] for r in con.execute("PRAGMA table_info(contacts)")]
        n = con.execute("SELECT count(*) FROM contacts").fetchone()[0]
    assert n == 400
    for col in (
        "contact_id",
        "created_at",
        "updated_at",
        "email",
        "phone",
        "birth_date",
        "gender",
        "country",
        "city",
        "income_band",
        "consent_email_marketing",
        "consent_tracking",
        "preferred_channel",
        "interests",
    ):
        assert col in cols
    orders = pd.read_csv(next((small_dataset / "transactions").glob("*.csv")))
    assert set(orders.columns) >= {
        "order_id",
        "customer_ref",
        "order_ts",
        "amount",
        "currency",
        "status",
        "category",
        "item_count",
    }
    events = pd.read_json(sorted((small_dataset / "events").glob("*.jsonl"))[-1], lines=True)
    assert set(events.columns) >= {
        "event_id",
        "anonymous_id",
        "user_id",
        "session_id",
        "event_ts",
        "event_type",
        "product_category",
        "device",
        "channel",
        "utm_source",
    }
    assert events["user_id"].isna().any(), "some events happen before login"


def test_dirty_rate_injects_every_defect_class(dirty_dataset):
    with sqlite3.connect(dirty_dataset / "crm.sqlite") as con:
        contacts = pd.read_sql("SELECT * FROM contacts", con)
    assert (~contacts["email"].str.contains("@")).any(), "malformed emails"
    normalised = contacts["email"].str.strip().str.lower()
    assert normalised.duplicated().any() and (contacts["email"] != contacts["email"].str.strip()).any(), (
        "case/whitespace duplicates"
    )
    years = pd.to_datetime(contacts["birth_date"]).dt.year
    assert (years < 1900).any() and (years > AS_OF.year).any(), "impossible ages"
    assert contacts["country"].isna().any(), "missing values"
    orders = pd.concat(pd.read_csv(p, dtype=str) for p in (dirty_dataset / "transactions").glob("*.csv"))
    amount = pd.to_numeric(orders["amount"], errors="coerce")
    assert (amount < 0).any() and amount.isna().any()
    assert (orders["currency"] == "XYZ").any()
    assert orders["order_ts"].str.startswith("2099").any()
    assert orders["customer_ref"].str.match(r"^C9\d{6}$").any(), "orders of unknown customers"
    events = pd.concat(pd.read_json(p, lines=True, dtype=False) for p in (dirty_dataset / "events").glob("*.jsonl"))
    assert events["event_type"].isna().any() and events["event_ts"].astype(str).str.startswith("2099").any()


@pytest.mark.postgres
def test_crm_in_postgresql_round_trips_through_the_extract(tmp_path, make_settings, postgres_url):
    """The same generator and extract code work against PostgreSQL through a SQLAlchemy URL."""
    import duckdb

    from segflow.extract import run_extract

    generate(tmp_path / "data", users=150, days=10, seed=3, dirty_rate=0.05, end_date=AS_OF, crm_url=postgres_url)
    settings = make_settings(tmp_path, tmp_path / "data", SEGFLOW__SOURCES__CRM__URL=postgres_url)
    result = run_extract(settings, AS_OF, "pg-run")["crm"]
    assert result.rows_in == result.rows_loaded + result.rows_quarantined
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        loaded = con.execute("SELECT count(*), count(DISTINCT contact_id) FROM raw.crm_contacts").fetchall()[0]
    assert loaded[0] == loaded[1] == result.rows_loaded >= 150
