import json
from datetime import date

import pandas as pd
import pytest

from segflow.core.config import REPO_ROOT
from segflow.quality.gates import QualityGateError, enforce, load_suite, validate_frame

SUITES = sorted(p.stem for p in (REPO_ROOT / "expectations").glob("*.json"))


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_loads_and_every_expectation_has_a_severity(suite, make_settings, tmp_path):
    settings = make_settings(tmp_path, tmp_path)
    loaded, key = load_suite(settings, suite)
    doc = json.loads((REPO_ROOT / "expectations" / f"{suite}.json").read_text())
    assert len(loaded.expectations) == len(doc["expectations"]) > 0 and key
    assert all(e["meta"]["severity"] in ("critical", "warning") for e in doc["expectations"])


def test_invalid_suite_fails_loudly(make_settings, tmp_path):
    folder = tmp_path / "expectations"
    folder.mkdir()
    (folder / "broken.json").write_text(
        json.dumps(
            {
                "name": "broken",
                "expectations": [
                    {
                        "type": "expect_column_values_to_not_be_nul",
                        "kwargs": {"column": "x"},
                        "meta": {"severity": "critical"},
                    }
                ],
            }
        )
    )
    settings = make_settings(tmp_path, tmp_path, SEGFLOW__QUALITY__EXPECTATIONS_DIR=str(folder))
    with pytest.raises(ValueError, match="invalid expectation"):
        load_suite(settings, "broken")


def scores(n=20):
    return pd.DataFrame(
        {
            "user_id": [f"U{i}" for i in range(n)],
            "churn_probability": [0.5] * n,
            "churn_risk_band": ["medium"] * n,
            "persona": ["P"] * n,
            "expected_orders_90d": [1.2] * n,
            "p_alive": [0.8] * n,
            "clv_12m": [150.0] * n,
        }
    )


def test_clean_scores_pass_and_data_docs_show_the_result(make_settings, tmp_path):
    from segflow.quality.gates import data_docs_index

    settings = make_settings(tmp_path, tmp_path)
    outcomes = validate_frame(settings, "marts_user_scores", scores(), {"feature_rows": 20})
    assert all(o.success for o in outcomes)
    assert enforce(outcomes) == {"checked": len(outcomes), "warnings": 0}
    index = data_docs_index(settings)
    assert index.exists() and "marts_user_scores" in index.read_text()
    validations = list((index.parent / "validations").rglob("*.html"))
    assert len(validations) == 1
    # A second run adds its result; the suite stays in sync with expectations/ (replaced, not duplicated).
    validate_frame(settings, "marts_user_scores", scores(), {"feature_rows": 20})
    assert len(list((index.parent / "validations").rglob("*.html"))) == 2


def test_critical_failure_names_suite_expectation_value_and_keys(make_settings, tmp_path):
    bad = scores()
    bad.loc[[3, 7], "churn_probability"] = 1.7
    bad.loc[1, "churn_probability"] = None  # GX leaves nulls out of the range check: keys must still line up
    bad.index = bad.index[::-1] + 100  # the keys come from the rows GX names, whatever the frame's index
    outcomes = validate_frame(make_settings(tmp_path, tmp_path), "marts_user_scores", bad, {"feature_rows": 20})
    (out_of_range,) = [o for o in outcomes if o.expectation == "expect_column_values_to_be_between" and not o.success]
    assert out_of_range.sample_keys == ["U3", "U7"]
    with pytest.raises(QualityGateError) as err:
        enforce(outcomes)
    message = str(err.value)
    assert "[marts_user_scores] expect_column_values_to_be_between on column churn_probability" in message
    assert "1.7" in message and "U3" in message


def test_schema_drift_is_critical(make_settings, tmp_path):
    outcomes = validate_frame(
        make_settings(tmp_path, tmp_path),
        "raw_events",
        pd.DataFrame({"event_id": ["e1"]}),
        {"max_ts": pd.Timestamp("2026-01-01")},
    )
    with pytest.raises(QualityGateError, match="expect_table_columns_to_match_set"):
        enforce(outcomes)


def test_row_count_must_match_features(make_settings, tmp_path):
    outcomes = validate_frame(make_settings(tmp_path, tmp_path), "marts_user_scores", scores(), {"feature_rows": 21})
    with pytest.raises(QualityGateError, match="expect_table_row_count_to_equal"):
        enforce(outcomes)


def test_warnings_are_recorded_but_do_not_block(make_settings, tmp_path):
    tx = pd.DataFrame(
        {
            "order_id": ["1", "2"],
            "customer_ref": ["C1", "C2"],
            "amount": [10.0, -5.0],
            "currency": ["EUR", "XYZ"],
            "order_ts": pd.to_datetime(["2026-01-01", "2099-01-01"]),
            "status": ["completed", "completed"],
            "category": ["home", "home"],
            "product_id": ["P1", None],
            "item_count": [1, 2],
            "line_id": [None, None],
            "line_type": [None, None],
            "order_line_key": ["1|", "2|"],
            "_source": "transactions",
            "_source_file": "f.csv",
            "_file_date": pd.Timestamp("2026-01-01"),
            "_row_ref": ["line 2", "line 3"],
            "_run_id": "r",
            "_loaded_at": pd.Timestamp("2026-01-02"),
            "customer_known": [True, True],
            "customer_ref_hash": [None, None],
        }
    )
    outcomes = validate_frame(
        make_settings(tmp_path, tmp_path),
        "raw_transactions",
        tx,
        {"max_ts": pd.Timestamp(date(2026, 1, 3)), "currencies": ["EUR"]},
    )
    failed = {(o.expectation, o.column) for o in outcomes if not o.success}
    assert failed == {
        ("expect_column_values_to_be_between", "amount"),
        ("expect_column_values_to_be_in_set", "currency"),
        ("expect_column_values_to_be_between", "order_ts"),
    }
    assert enforce(outcomes)["warnings"] == 3


def test_scores_of_a_past_date_are_counted_against_its_history_partition(make_settings, tmp_path):
    import duckdb

    from segflow.quality.gates import validate_scores

    settings = make_settings(tmp_path, tmp_path)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("CREATE SCHEMA marts")
        con.execute("CREATE TABLE marts.user_features AS SELECT 'U1' AS user_id, DATE '2026-09-30' AS as_of")
        con.execute("""CREATE TABLE marts.user_features_history AS
                       SELECT 'U' || i AS user_id, DATE '2026-09-01' AS as_of FROM range(21) t(i)""")
    past = date(2026, 9, 1)
    assert validate_scores(settings, scores(21), past, "r")["warnings"] == 0
    with pytest.raises(QualityGateError, match="expect_table_row_count_to_equal"):
        validate_scores(settings, scores(20), past, "r")
