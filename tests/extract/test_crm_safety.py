"""The CRM extract under the contract's corner cases: epoch watermarks, conflicting versions, consent that
cannot be read."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime

import duckdb

from segflow.extract import run_extract
from tests.conftest import audit_balances

D = date(2026, 5, 10)


def _epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def _crm(tmp_path, sources_settings, ddl: str):
    path = tmp_path / "crm.sqlite"
    with sqlite3.connect(path) as con:
        con.execute(ddl)
    return path, sources_settings(
        {"crm": {"url": f"sqlite:///{path}", "table": "contacts", "lookback_hours": 24}},
        warehouse={"path": str(tmp_path / "warehouse.duckdb")},
    )


def _rows(settings, sql):
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_an_integer_epoch_watermark_keeps_loading_changes(tmp_path, sources_settings):
    path, settings = _crm(
        tmp_path,
        sources_settings,
        "CREATE TABLE contacts (contact_id TEXT, created_at INTEGER, updated_at INTEGER, email TEXT)",
    )
    with sqlite3.connect(path) as con:
        con.execute(
            "INSERT INTO contacts VALUES ('C1', ?, ?, 'a@x.com')",
            [_epoch("2026-05-01 09:00:00"), _epoch("2026-05-09 09:00:00")],
        )
    run_extract(settings, D, "r1")
    with sqlite3.connect(path) as con:  # the next day: an edit, and a new contact
        con.execute("UPDATE contacts SET updated_at = ?, email = 'a2@x.com'", [_epoch("2026-05-11 08:00:00")])
        con.execute(
            "INSERT INTO contacts VALUES ('C2', ?, ?, 'b@x.com')",
            [_epoch("2026-05-11 07:00:00"), _epoch("2026-05-11 07:00:00")],
        )
    second = run_extract(settings, date(2026, 5, 11), "r2")["crm"]
    assert second.new_rows == 2, "after the first run, changes were never loaded again"
    assert _rows(settings, "SELECT contact_id, email FROM raw.crm_contacts ORDER BY updated_at") == [
        ("C1", "a@x.com"),
        ("C2", "b@x.com"),
        ("C1", "a2@x.com"),
    ]


def test_conflicting_versions_resolve_deterministically_with_a_warning(tmp_path, sources_settings):
    path, settings = _crm(
        tmp_path,
        sources_settings,
        "CREATE TABLE contacts (contact_id TEXT, created_at TEXT, "
        "updated_at TEXT, email TEXT, consent_email_marketing TEXT)",
    )
    with sqlite3.connect(path) as con:
        con.executemany(
            "INSERT INTO contacts VALUES (?, '2026-05-01 09:00:00', '2026-05-09 09:00:00', ?, ?)",
            [("C1", "b@x.com", "true"), ("C1", "a@x.com", "false"), ("C2", "c@x.com", "true")],
        )
    result = run_extract(settings, D, "r1")["crm"]
    assert (result.rows_in, result.rows_loaded, result.rows_quarantined) == (3, 2, 1)
    ((kept_email, consent),) = _rows(
        settings, "SELECT email, consent_email_marketing FROM raw.crm_contacts WHERE contact_id = 'C1'"
    )
    assert consent is False, "rivals disagreeing on consent leave no consent"
    assert _rows(settings, "SELECT reason FROM raw.quarantine")[0][0].startswith("conflicting version")
    assert any("warning" in n for n in result.details[0]["notes"])
    # Deterministic: the same rows in the other order keep the same version.
    again = tmp_path / "again"
    again.mkdir()
    path2, settings2 = _crm(
        again,
        sources_settings,
        "CREATE TABLE contacts (contact_id TEXT, created_at TEXT, updated_at TEXT, email TEXT, "
        "consent_email_marketing TEXT)",
    )
    with sqlite3.connect(path2) as con:
        con.executemany(
            "INSERT INTO contacts VALUES (?, '2026-05-01 09:00:00', '2026-05-09 09:00:00', ?, ?)",
            [("C2", "c@x.com", "true"), ("C1", "a@x.com", "false"), ("C1", "b@x.com", "true")],
        )
    run_extract(settings2, D, "r1")
    assert _rows(settings2, "SELECT email FROM raw.crm_contacts WHERE contact_id = 'C1'") == [(kept_email,)]
    # A later run finding other values under a loaded version quarantines them and keeps the loaded one.
    with sqlite3.connect(path2) as con:
        con.execute("UPDATE contacts SET email = 'z@x.com' WHERE contact_id = 'C2'")
    rerun = run_extract(settings2, D, "r2")["crm"]
    assert rerun.rows_quarantined >= 1
    assert _rows(settings2, "SELECT email FROM raw.crm_contacts WHERE contact_id = 'C2'") == [("c@x.com",)]
    audit_balances(settings2)


def test_unreadable_consent_is_no_consent_and_replaces_an_older_opt_in(tmp_path, sources_settings):
    path, settings = _crm(
        tmp_path,
        sources_settings,
        "CREATE TABLE contacts (contact_id TEXT, created_at TEXT, "
        "updated_at TEXT, email TEXT, consent_email_marketing TEXT)",
    )
    with sqlite3.connect(path) as con:
        con.execute(
            "INSERT INTO contacts VALUES ('C1', '2026-05-01 09:00:00', '2026-05-08 09:00:00', 'a@x.com', 'yes')"
        )
    run_extract(settings, date(2026, 5, 8), "r1")
    with sqlite3.connect(path) as con:
        con.execute("UPDATE contacts SET updated_at = '2026-05-09 09:00:00', consent_email_marketing = 'maybe'")
    result = run_extract(settings, D, "r2")["crm"]
    assert (result.rows_in, result.rows_loaded, result.rows_quarantined) == (1, 1, 0), "loaded, not quarantined"
    assert _rows(settings, "SELECT consent_email_marketing FROM raw.crm_contacts ORDER BY updated_at") == [
        (True,),
        (False,),
    ]
    assert any("unreadable consent" in n for n in result.details[0]["notes"])


def test_a_backfilled_day_before_the_crm_watermark_loads_an_empty_window(tmp_path, sources_settings):
    path, settings = _crm(
        tmp_path,
        sources_settings,
        "CREATE TABLE contacts (contact_id TEXT, created_at TEXT, updated_at TEXT, email TEXT)",
    )
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO contacts VALUES ('C1', '2026-04-01 09:00:00', '2026-05-09 09:00:00', 'a@x.com')")
    run_extract(settings, D, "r1")
    # An earlier date after a later one (a backfill): nothing in the CRM window is known yet.
    earlier = run_extract(settings, date(2026, 4, 20), "r2")["crm"]
    assert (earlier.rows_in, earlier.rows_loaded, earlier.rows_quarantined, earlier.new_rows) == (0, 0, 0, 0)
    audit_balances(settings)
