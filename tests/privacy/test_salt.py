"""PII hashing: the salt comes from the environment only, never reaches SQL text or dbt's artefacts, is required
for real data, and may not change under a loaded warehouse."""

from __future__ import annotations

import json
from datetime import date

import duckdb
import pytest

from segflow.extract import ExtractError, run_extract
from segflow.privacy.salt import DEV_SALT, PrivacyError, pii_hash, pii_salt

DAY = date(2026, 3, 2)


def test_the_salt_comes_from_the_environment_and_real_data_needs_one():
    assert pii_salt(generated_only=False, environ={"SEGFLOW_PII_SALT": "s"}) == ("s", None)
    salt, warning = pii_salt(generated_only=True, environ={})
    assert salt == DEV_SALT and "generated data only" in warning
    with pytest.raises(PrivacyError, match="SEGFLOW_PII_SALT is not set"):
        pii_salt(generated_only=False, environ={})


def _drop(tmp_path, sources_settings, generated: bool):
    folder = tmp_path / "data" / "transactions"
    folder.mkdir(parents=True)
    (folder / f"{DAY}.csv").write_text(
        "order_id,customer_ref,order_ts,amount,currency,status\n"
        "O1,Ann.Example@Mail.com ,2026-03-02T10:00:00,1,EUR,completed\n"
    )
    if generated:
        (tmp_path / "data" / "manifest.json").write_text(json.dumps({"users": 1, "days": 1, "seed": 1}))
    return sources_settings({"transactions": {"path": str(folder)}})


def test_real_data_without_a_salt_is_refused(tmp_path, sources_settings, monkeypatch):
    monkeypatch.delenv("SEGFLOW_PII_SALT")
    with pytest.raises(ExtractError, match="SEGFLOW_PII_SALT is not set"):
        run_extract(_drop(tmp_path, sources_settings, generated=False), DAY, "r")


def test_generated_data_may_use_the_development_salt(tmp_path, sources_settings, monkeypatch, caplog):
    monkeypatch.delenv("SEGFLOW_PII_SALT")
    settings = _drop(tmp_path, sources_settings, generated=True)
    run_extract(settings, DAY, "r")
    assert "development salt" in caplog.text
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        hashed = con.execute("SELECT customer_ref_hash FROM raw.transactions").fetchone()[0]
    assert hashed == pii_hash("ann.example@mail.com", DEV_SALT)


def test_the_salt_may_not_change_under_a_loaded_warehouse(tmp_path, sources_settings, monkeypatch):
    settings = _drop(tmp_path, sources_settings, generated=False)
    monkeypatch.setenv("SEGFLOW_PII_SALT", "first")
    run_extract(settings, DAY, "r1")
    monkeypatch.setenv("SEGFLOW_PII_SALT", "second")
    with pytest.raises(ExtractError, match="not the salt this warehouse's hashes were made with"):
        run_extract(settings, DAY, "r2")


def test_the_salt_is_in_no_view_definition_nor_dbt_artefact(tmp_path, small_dataset, make_settings, monkeypatch):
    from segflow.core.dbt import dbt_vars, run_dbt

    secret = "pepper-9f1c2e"
    monkeypatch.setenv("SEGFLOW_PII_SALT", secret)
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "dbt-target"))
    settings = make_settings(tmp_path, small_dataset)
    run_extract(settings, date(2026, 9, 30), "r")
    run_dbt(
        settings,
        ["build", "--select", "resource_type:seed", "staging", "--indirect-selection", "cautious", "--quiet"],
        vars=dbt_vars("2026-09-30", settings),
    )
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        views = " ".join(r[0] for r in con.execute("SELECT sql FROM duckdb_views()").fetchall())
        hashed = con.execute("SELECT count(email_hash) FROM staging.stg_crm__contacts").fetchone()[0]
    assert hashed > 0 and secret not in views
    for path in (tmp_path / "dbt-target").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
