"""The extract and the erasure on a PostgreSQL warehouse (`warehouse.url`): the same raw layer, quarantine, audit and
ledger as on DuckDB, published all at once, rerun without duplicates, and people forgotten the same way."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from segflow.core.engines import connect_engine
from segflow.extract import ExtractError, resolve_salt, run_extract, source_specs
from tests.conftest import AS_OF

pytestmark = pytest.mark.postgres

# Columns that record when (not what) a row was loaded.
WHEN = {"_loaded_at", "quarantined_at", "loaded_at", "registered_at", "first_used_at", "applied_at"}
TABLES = (
    "raw.crm_contacts",
    "raw.events",
    "raw.transactions",
    "raw.quarantine",
    "raw.load_audit",
    "raw.loaded_files",
    "raw.sources",
    "raw.pii_salt",
)


def raw_layer(settings) -> dict[str, list]:
    """Every raw table's rows (without load times), as sortable text."""
    out = {}
    with connect_engine(settings.warehouse_url) as engine:
        for table in TABLES:
            frame = engine.frame(f"SELECT * FROM {table}")
            frame = frame.drop(columns=[c for c in frame.columns if c in WHEN])
            out[table] = sorted(
                tuple("" if pd.isna(value) else str(value) for value in row)
                for row in frame.astype(object).itertuples(index=False)
            )
    return out


def test_the_extract_loads_the_same_raw_layer_into_postgresql(tmp_path, make_settings, postgres_url):
    from segflow.privacy.erasure import apply_erasures, request_erasure
    from segflow.synthetic.generator import generate

    data = tmp_path / "data"
    generate(data, users=150, days=20, seed=5, end_date=AS_OF)
    # A hostile file among the good ones: a row refused (quarantined with its reason) and one loaded.
    (data / "transactions" / f"{AS_OF}-extra.csv").write_text(
        "order_id,customer_ref,order_ts,amount,currency,status\n"
        f"x1,c1,{AS_OF} 10:00:00,abc,EUR,completed\n"
        f"x2,c1,{AS_OF} 11:00:00,inf,EUR,completed\n"
        f"x3,c1,{AS_OF} 12:00:00,3.5,EUR,completed\n"
    )
    duck = make_settings(tmp_path / "duck", data)
    pg = make_settings(tmp_path / "pg", data, SEGFLOW__WAREHOUSE__URL=postgres_url)
    for settings in (duck, pg):
        run_extract(settings, AS_OF - timedelta(days=1), "r1")
        run_extract(settings, AS_OF, "r2")
    on_duckdb, on_postgres = raw_layer(duck), raw_layer(pg)
    for table in TABLES:
        assert on_postgres[table] == on_duckdb[table], table
    assert len(on_postgres["raw.events"]) > 500 and len(on_postgres["raw.crm_contacts"]) >= 150
    reasons = {row[5] for row in on_postgres["raw.quarantine"]}
    assert "cannot parse 'abc' as double" in reasons and "not a finite number" in reasons

    # A rerun (forced: every file reloaded) replaces what it loads: nothing is duplicated.
    run_extract(pg, AS_OF, "r3", force=True)
    again = raw_layer(pg)
    for table in ("raw.crm_contacts", "raw.events", "raw.transactions", "raw.quarantine", "raw.loaded_files"):
        assert len(again[table]) == len(on_postgres[table]), table

    # A refused source loads nothing of itself; the others are published.
    (data / "events" / f"{AS_OF}.jsonl").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ExtractError, match="events"):
        run_extract(pg, AS_OF, "r4")
    with connect_engine(pg.warehouse_url) as engine:
        audited = {r[0] for r in engine.fetchall("SELECT DISTINCT source FROM raw.load_audit WHERE run_id = 'r4'")}
    assert "transactions" in audited and "events" not in audited

    # Erasure: the same person forgotten in both warehouses, the same rows removed.
    with connect_engine(duck.warehouse_url) as engine:
        (email,) = engine.fetchall("SELECT min(email) FROM raw.crm_contacts WHERE email IS NOT NULL")[0]
    erased = {}
    for settings in (duck, pg):
        # A warehouse table that happens to bear the name of one of the erasure's temporary tables is not dropped.
        with connect_engine(settings.warehouse_url, read_only=False) as engine:
            engine.execute("CREATE TABLE erase_ids AS SELECT 'kept' AS note")
        request_erasure(settings, email=email.upper())
        with connect_engine(settings.warehouse_url, read_only=False) as engine:
            salt = resolve_salt(engine, source_specs(settings))
        erased[settings.warehouse_engine] = apply_erasures(settings, "erase", salt)
    assert erased["postgresql"].rows_erased == erased["duckdb"].rows_erased
    for settings in (duck, pg):
        with connect_engine(settings.warehouse_url) as engine:
            assert engine.fetchall("SELECT note FROM erase_ids") == [("kept",)], settings.warehouse_engine
    assert erased["postgresql"].rows_erased.get("raw.crm_contacts", 0) >= 1
    with connect_engine(pg.warehouse_url) as engine:
        assert engine.fetchall("SELECT count(*) FROM raw.crm_contacts WHERE lower(email) = lower(?)", [email]) == [(0,)]
        assert engine.fetchall("SELECT count(*) FROM raw.erasure_log") == [(1,)]
