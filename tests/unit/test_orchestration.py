from datetime import date, datetime, timezone

import pytest

from segflow.orchestration import as_of_from_context, parse_as_of, resolve_as_of


def test_explicit_as_of_wins():
    assert resolve_as_of("2026-03-01", [{"as_of": "2026-05-01"}], datetime(2026, 6, 1, tzinfo=timezone.utc)) == date(2026, 3, 1)


def test_asset_triggered_run_takes_the_latest_event_date():
    events = [{"as_of": "2026-05-01"}, {"as_of": "2026-05-03"}, {}]
    assert resolve_as_of(None, events, None) == date(2026, 5, 3)


def test_scheduled_run_processes_the_day_before_its_logical_date():
    assert resolve_as_of("", [], datetime(2026, 6, 2, 0, 0, tzinfo=timezone.utc)) == date(2026, 6, 1)


def test_run_without_logical_date_uses_run_after_then_today():
    assert resolve_as_of(None, None, None, datetime(2026, 6, 2, 13, 0, tzinfo=timezone.utc)) == date(2026, 6, 1)
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
    ctx = {"params": {"as_of": ""}, "triggering_asset_events": {"segflow.marts.user_features": [_Event()]}, "logical_date": None}
    assert as_of_from_context(ctx) == date(2026, 4, 4)


def test_full_refresh_flag_from_conf_or_params():
    from types import SimpleNamespace

    from segflow.orchestration import full_refresh_from_context

    assert full_refresh_from_context({"params": {"full_refresh": False}}) is False
    assert full_refresh_from_context({"params": {"full_refresh": True}}) is True
    assert full_refresh_from_context({"dag_run": SimpleNamespace(conf={"full_refresh": "true"}), "params": {}}) is True
    assert full_refresh_from_context({}) is False
