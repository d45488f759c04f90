"""CRM (SQL, watermark + lookback) and HTTP API sources, against real servers started here."""

import json
import sqlite3
import threading
import time
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import duckdb
import pytest

from segflow.extract import ExtractError, run_extract
from segflow.extract.http import days_to_load, retry_after_seconds
from tests.conftest import audit_balances

D = date(2026, 5, 10)


def _ts(day: date, hour: int) -> str:
    return f"{day} {hour:02d}:00:00"


def _query(settings, sql, params=None):
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


# --- CRM over SQL ---------------------------------------------------------------------------------

CRM_ROWS = [  # contact_id, created_at, updated_at, email
    ("C1", _ts(D - timedelta(days=30), 9), _ts(D - timedelta(days=2), 9), "a@example.com"),
    ("C2", _ts(D - timedelta(days=20), 9), _ts(D - timedelta(days=1), 9), "b@example.com"),
    ("C3", _ts(D - timedelta(days=10), 9), _ts(D, 22), "c@example.com"),
    ("C4", _ts(D + timedelta(days=1), 8), _ts(D + timedelta(days=1), 8), "d@example.com"),  # not yet created on D
    ("C5", _ts(D - timedelta(days=5), 9), None, "e@example.com"),  # broken row: no updated_at
]


def _exec(url: str, statements: list[tuple[str, list]]) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        for sql, rows in statements:
            for row in rows or [{}]:
                conn.execute(text(sql), row)
    engine.dispose()


def _crm_scenario(settings, url: str) -> None:
    insert = "INSERT INTO contacts VALUES (:id, :created, :updated, :email)"
    _exec(url, [(insert, [dict(zip(("id", "created", "updated", "email"), r, strict=True)) for r in CRM_ROWS])])
    first = run_extract(settings, D, "run-d")["crm"]

    def versions():
        return sorted(_query(settings, "SELECT contact_id, strftime(updated_at, '%Y-%m-%d %H') FROM raw.crm_contacts"))

    assert [v[0] for v in versions()] == ["C1", "C2", "C3"], "C4 did not exist yet; C5 is quarantined"
    assert (first.rows_in, first.rows_loaded, first.rows_quarantined) == (4, 3, 1)
    # Next day: C1 is edited, and an update of C2 committed late carries a time before the watermark (D 22:00)
    # but inside the 72 h lookback; an update older than the lookback is missed by design.
    _exec(
        url,
        [
            (
                "UPDATE contacts SET updated_at = :u, email = :e WHERE contact_id = :id",
                [{"u": _ts(D + timedelta(days=1), 10), "e": "a2@example.com", "id": "C1"}],
            ),
            (
                insert,
                [
                    {"id": "C2", "created": CRM_ROWS[1][1], "updated": _ts(D, 20), "email": "b2@example.com"},
                    {
                        "id": "C3",
                        "created": CRM_ROWS[2][1],
                        "updated": _ts(D - timedelta(days=9), 1),
                        "email": "old@example.com",
                    },
                ],
            ),
        ],
    )
    second = run_extract(settings, D + timedelta(days=1), "run-d1")["crm"]
    assert versions() == sorted(
        [
            ("C1", f"{D - timedelta(days=2)} 09"),
            ("C1", f"{D + timedelta(days=1)} 10"),
            ("C2", f"{D - timedelta(days=1)} 09"),
            ("C2", f"{D} 20"),
            ("C3", f"{D} 22"),
            ("C4", f"{D + timedelta(days=1)} 08"),
        ]
    )
    assert second.new_rows == 3
    rerun = run_extract(settings, D + timedelta(days=1), "run-d1-again")["crm"]
    assert rerun.new_rows == 0 and len(versions()) == 6, "a rerun never duplicates"
    assert _query(settings, "SELECT row_ref, column_name, reason FROM raw.quarantine") == [
        ("contact_id=C5", "updated_at", "missing required value")
    ], "a row refused again is listed once"
    audit_balances(settings)


def test_crm_sqlite_incremental_by_watermark_with_lookback(tmp_path, sources_settings):
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    with sqlite3.connect(tmp_path / "crm.sqlite") as con:
        con.execute("CREATE TABLE contacts (contact_id TEXT, created_at TEXT, updated_at TEXT, email TEXT)")
    settings = sources_settings({"crm": {"url": url, "table": "contacts", "lookback_hours": 72}})
    _crm_scenario(settings, url)


def test_crm_postgresql_through_an_airflow_connection(tmp_path, sources_settings, postgres_url, monkeypatch):
    _exec(
        postgres_url,
        [("CREATE TABLE contacts (contact_id TEXT, created_at TIMESTAMP, updated_at TIMESTAMP, email TEXT)", None)],
    )
    monkeypatch.setenv("AIRFLOW_CONN_SEGFLOW_CRM", postgres_url.replace("postgresql+psycopg2://", "postgres://"))
    settings = sources_settings({"crm": {"conn_id": "segflow_crm", "table": "contacts", "lookback_hours": 72}})
    _crm_scenario(settings, postgres_url)


def test_crm_mapping_and_missing_table(tmp_path, sources_settings):
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    with sqlite3.connect(tmp_path / "crm.sqlite") as con:
        con.execute("CREATE TABLE people (Id TEXT, Created TEXT, Modified TEXT, Mail TEXT, OptIn TEXT)")
        con.execute(
            "INSERT INTO people VALUES ('P1', '2026-05-01 10:00:00', '2026-05-02 10:00:00', 'x@example.com', 'yes')"
        )
    mapping = {
        "rename": {
            "Id": "contact_id",
            "Created": "created_at",
            "Modified": "updated_at",
            "Mail": "email",
            "OptIn": "consent_email_marketing",
        }
    }
    settings = sources_settings({"crm": {"url": url, "table": "people", "mapping": mapping}})
    run_extract(settings, D, "r")
    assert _query(settings, "SELECT contact_id, email, consent_email_marketing FROM raw.crm_contacts") == [
        ("P1", "x@example.com", True)
    ]
    settings = sources_settings({"crm": {"url": url, "table": "nope"}})
    with pytest.raises(ExtractError, match="table 'nope' does not exist"):
        run_extract(settings, D, "r")


# --- HTTP API -------------------------------------------------------------------------------------


class FakeEventsApi:
    """A paginated events API: Bearer auth, a 429 with Retry-After then a 503 before the first success."""

    def __init__(self, token="secret-token"):
        self.token = token
        self.per_day = {D - timedelta(days=i): 3 for i in range(5)}
        self.log: list[tuple[float, int, dict]] = []
        self.failures = [(429, {"Retry-After": "1"}), (503, {})]
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self._send(401, {"error": "bad token"})
                if api.failures:
                    status, headers = api.failures.pop(0)
                    return self._send(status, {"error": "slow down"}, headers)
                day = date.fromisoformat(query["start"])
                assert date.fromisoformat(query["end"]) == day + timedelta(days=1)
                events = [
                    {
                        "event_id": f"e-{day}-{i}",
                        "anonymous_id": f"a{i}",
                        "user_id": None,
                        "event_ts": f"{day}T{10 + i}:00:00Z",
                        "event_type": "page_view",
                        "context": {"device": "mobile"},
                    }
                    for i in range(api.per_day.get(day, 0))
                ]
                page, size = int(query.get("page", 1)), int(query.get("per_page", 100))
                self._send(200, {"data": events[(page - 1) * size : page * size]})

            def _send(self, status, body, headers=None):
                api.log.append((time.monotonic(), status, dict(parse_qs(urlparse(self.path).query))))
                payload = json.dumps(body).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def events_api():
    api = FakeEventsApi()
    yield api
    api.server.shutdown()


def test_http_source_paginates_retries_and_replaces_its_days(events_api, sources_settings, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SEGFLOW_EVENTS_API",
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": events_api.port, "password": "secret-token"}),
    )
    settings = sources_settings(
        {
            "events_api": {
                "kind": "http",
                "dataset": "events",
                "conn_id": "segflow_events_api",
                "url": "/v1/events",
                "records_path": "data",
                "pagination": {"type": "page", "param": "page", "size_param": "per_page", "size": 2},
                "start_date": str(D - timedelta(days=2)),
                "backoff_seconds": 0.1,
                "mapping": {"rename": {"context.device": "device"}},  # nested API fields are dotted columns
            }
        }
    )
    result = run_extract(settings, D, "run-1")["events_api"]
    statuses = [s for _, s, _ in events_api.log]
    assert statuses[:3] == [429, 503, 200], "retried after 429 and 503"
    assert events_api.log[1][0] - events_api.log[0][0] >= 0.95, "Retry-After: 1 was honoured"
    assert [d["batch"] for d in result.details] == [str(D - timedelta(days=i)) for i in (2, 1, 0)]
    assert result.rows_loaded == 9 and _query(settings, "SELECT count(*) FROM raw.events")[0][0] == 9
    pages_for_day = [q for _, s, q in events_api.log if s == 200 and q["start"] == [str(D)]]
    assert [q["page"] for q in pages_for_day] == [["1"], ["2"]], "3 records at 2 per page"
    # The API corrects day D: a rerun of D replaces that day only and never duplicates.
    events_api.per_day[D] = 4
    rerun = run_extract(settings, D, "run-2")["events_api"]
    assert [d["batch"] for d in rerun.details] == [str(D)]
    assert _query(settings, "SELECT count(*), count(DISTINCT event_id) FROM raw.events") == [(10, 10)]
    assert _query(settings, "SELECT DISTINCT device FROM raw.events") == [("mobile",)]
    audit_balances(settings)


def test_http_source_refuses_a_bad_token_with_a_clear_message(events_api, sources_settings, monkeypatch):
    monkeypatch.setenv("EVENTS_TOKEN", "wrong")
    settings = sources_settings(
        {
            "events_api": {
                "kind": "http",
                "dataset": "events",
                "url": f"http://127.0.0.1:{events_api.port}/v1/events",
                "auth": {"token_env": "EVENTS_TOKEN"},
                "records_path": "data",
            }
        }
    )
    with pytest.raises(ExtractError, match=r"HTTP 401 \(check the token"):
        run_extract(settings, D, "r")


def test_http_gives_up_after_max_retries(events_api, sources_settings, monkeypatch):
    events_api.failures = [(503, {})] * 10
    monkeypatch.setenv("EVENTS_TOKEN", "secret-token")
    settings = sources_settings(
        {
            "events_api": {
                "kind": "http",
                "dataset": "events",
                "url": f"http://127.0.0.1:{events_api.port}/v1/events",
                "auth": {"token_env": "EVENTS_TOKEN"},
                "records_path": "data",
                "max_retries": 2,
                "backoff_seconds": 0.01,
            }
        }
    )
    with pytest.raises(ExtractError, match=r"giving up after 3 attempts \(HTTP 503\)"):
        run_extract(settings, D, "r")


def test_interval_helpers():
    assert days_to_load(None, None, D) == [D]
    assert days_to_load(None, D - timedelta(days=2), D) == [D - timedelta(days=2), D - timedelta(days=1), D]
    assert days_to_load(D - timedelta(days=1), None, D) == [D]
    assert days_to_load(D + timedelta(days=3), None, D) == [D], "a backfill of a past date reloads that date"
    assert retry_after_seconds("7") == 7
    assert (
        retry_after_seconds("Wed, 21 Oct 2026 07:28:10 GMT", datetime(2026, 10, 21, 7, 28, 0).astimezone()) is not None
    )
