from datetime import UTC, date, datetime

import pytest

from segflow.airflow.callables import as_of_from_context, parse_as_of, resolve_as_of


def test_explicit_as_of_wins():
    assert resolve_as_of("2026-03-01", [{"as_of": "2026-05-01"}], datetime(2026, 6, 1, tzinfo=UTC)) == date(2026, 3, 1)


def test_asset_triggered_run_takes_the_latest_event_date():
    events = [{"as_of": "2026-05-01"}, {"as_of": "2026-05-03"}, {}]
    assert resolve_as_of(None, events, None) == date(2026, 5, 3)


def test_scheduled_run_processes_the_day_before_its_logical_date():
    assert resolve_as_of("", [], datetime(2026, 6, 2, 0, 0, tzinfo=UTC)) == date(2026, 6, 1)


def test_run_without_logical_date_uses_run_after_then_today():
    assert resolve_as_of(None, None, None, datetime(2026, 6, 2, 13, 0, tzinfo=UTC)) == date(2026, 6, 1)
    assert resolve_as_of(None, None, None, None, today=date(2026, 1, 1)) == date(2025, 12, 31)


def test_bad_dates_are_refused_with_the_value():
    with pytest.raises(ValueError, match="2026-13-01"):
        parse_as_of("2026-13-01")


class _Run:
    conf = {"as_of": "2026-02-03"}
    run_after = None


class _Event:
    extra = {"as_of": "2026-04-04"}


def test_context_resolution_reads_conf_params_and_events():
    assert as_of_from_context({"dag_run": _Run(), "params": {"as_of": ""}}) == date(2026, 2, 3)
    ctx = {
        "params": {"as_of": ""},
        "triggering_asset_events": {"segflow.marts.user_features": [_Event()]},
        "logical_date": None,
    }
    assert as_of_from_context(ctx) == date(2026, 4, 4)


def test_full_refresh_flag_from_conf_or_params():
    from types import SimpleNamespace

    from segflow.airflow.callables import full_refresh_from_context

    assert full_refresh_from_context({"params": {"full_refresh": False}}) is False
    assert full_refresh_from_context({"params": {"full_refresh": True}}) is True
    assert full_refresh_from_context({"dag_run": SimpleNamespace(conf={"full_refresh": "true"}), "params": {}}) is True
    assert full_refresh_from_context({}) is False


def test_failure_callback_records_the_alert_and_posts_it_to_the_webhook(tmp_path, monkeypatch):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from types import SimpleNamespace

    from segflow.airflow.dag_defaults import DEFAULT_ARGS

    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SEGFLOW_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_port}/hook")
    monkeypatch.setenv("SEGFLOW_ALERT_LOG", str(tmp_path / "alerts.jsonl"))
    ti = SimpleNamespace(dag_id="segflow_build", task_id="validate_marts", try_number=3)
    context = {
        "task_instance": ti,
        "run_id": "scheduled__2026-06-02",
        "exception": ValueError("suite marts_user_features failed"),
    }
    DEFAULT_ARGS["on_failure_callback"](context)
    server.shutdown()
    recorded = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert len(recorded) == 1 and received == recorded
    assert recorded[0]["task_id"] == "validate_marts" and recorded[0]["try_number"] == 3
    assert "marts_user_features" in recorded[0]["error"]
    # A dead webhook never masks the task's own failure.
    monkeypatch.setenv("SEGFLOW_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_port}/gone")
    DEFAULT_ARGS["on_failure_callback"](context)
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 2


def test_scoring_takes_every_date_its_asset_events_carry():
    from types import SimpleNamespace

    from segflow.airflow.callables import as_of_dates_from_context

    events = {
        "segflow.marts.user_features": [
            SimpleNamespace(extra={"as_of": d}) for d in ("2026-09-12", "2026-09-10", "2026-09-11")
        ]
    }
    assert as_of_dates_from_context({"params": {"as_of": ""}, "triggering_asset_events": events}) == [
        date(2026, 9, 10),
        date(2026, 9, 11),
        date(2026, 9, 12),
    ]
    # An explicit date (a manual run) wins over events.
    assert as_of_dates_from_context({"params": {"as_of": "2026-01-05"}, "triggering_asset_events": events}) == [
        date(2026, 1, 5)
    ]


def test_scoring_catches_up_published_dates_without_current_scores(tmp_path, monkeypatch):
    """Dates handed by events, plus published dates never scored or rebuilt since their scoring."""
    import duckdb

    from segflow.airflow.callables import dates_to_score

    warehouse = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("SEGFLOW__WAREHOUSE__PATH", str(warehouse))
    d = [date(2026, 9, day) for day in (10, 11, 12, 13)]
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE SCHEMA marts; CREATE SCHEMA quality")
        con.execute(
            "CREATE TABLE marts.user_segment_history AS SELECT * FROM (VALUES ('u1', ?::DATE), ('u1', ?::DATE), "
            "('u1', ?::DATE), ('u1', ?::DATE)) t(user_id, as_of)",
            d,
        )
        # A training snapshot date: features only, never published by the build, so never scored.
        con.execute("CREATE TABLE marts.user_features_history AS SELECT 'u1' AS user_id, DATE '2026-05-01' AS as_of")
        con.execute("CREATE TABLE quality.validation_results (as_of DATE, suite VARCHAR, validated_at TIMESTAMP)")
        con.execute(
            "INSERT INTO quality.validation_results VALUES (?, 'marts_user_features', '2026-09-14 01:00'), "
            "(?, 'marts_user_features', '2026-09-14 01:00'), (?, 'marts_user_features', '2026-09-20 01:00'), "
            "(?, 'marts_user_features', '2026-09-14 01:00')",
            d,
        )
        # 10th and 12th scored after their build; the 12th was rebuilt on the 20th; the 11th and 13th never scored.
        con.execute(
            "CREATE TABLE marts.user_scores_history AS SELECT * FROM (VALUES (?::DATE, TIMESTAMP '2026-09-14 02:00'), "
            "(?::DATE, TIMESTAMP '2026-09-14 02:00')) t(as_of, scored_at)",
            [d[0], d[2]],
        )
    assert dates_to_score([d[3]]) == [d[1], d[2], d[3]]
    assert dates_to_score([d[0]]) == [d[1], d[2], d[3]], "a handed date already scored since its build is skipped"
    assert dates_to_score([d[0]], explicit=True) == [d[0]]


def test_task_results_are_summarised_for_the_progress_lines():
    from segflow.airflow.progress import summarise_result

    extract = {
        "crm": {"rows_loaded": 10, "rows_quarantined": 1},
        "events": {"rows_loaded": 1_000, "rows_quarantined": 0},
    }
    assert summarise_result(extract) == "1,010 rows loaded, 1 quarantined"
    assert summarise_result({"checked": 23, "warnings": 2}) == "23 checks, 2 warnings"
    assert summarise_result([{"as_of": "2026-09-30", "users": 9_981}]) == "9,981 users as of 2026-09-30"
    assert summarise_result({"skipped": "no date to score"}) == "skipped: no date to score"
    assert summarise_result("2026-09-30") is None and summarise_result(None) is None


def test_progress_goes_to_the_descriptor_segflow_run_names(monkeypatch):
    import json
    import os

    from segflow.airflow import progress

    read_fd, write_fd = os.pipe()
    monkeypatch.setenv(progress.PROGRESS_FD_ENV, str(write_fd))

    class Ti:
        dag_id, task_id = "segflow_build", "extract"

        def xcom_pull(self, task_ids):
            return {"checked": 3, "warnings": 0}

    progress.on_start({"ti": Ti()})
    progress.on_success({"ti": Ti()})
    progress.report("failed", {"ti": Ti(), "exception": ValueError("bad file")})
    os.close(write_fd)
    with os.fdopen(read_fd) as lines:
        events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["start", "success", "failed"]
    assert events[1]["summary"] == "3 checks, 0 warnings" and events[1]["seconds"] is not None
    assert events[2]["error"] == "bad file"
    monkeypatch.delenv(progress.PROGRESS_FD_ENV)
    progress.on_start({"ti": Ti()})  # scheduled runs: nothing to report to, nothing happens
