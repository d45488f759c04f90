"""The dbt project follows dbt's structure guide: sources are read in staging only, every model is used, base
models feed the staging models that deduplicate them, every Python-written table is a declared source, and the
exposures name the models their consumers really read."""

from __future__ import annotations

import json
import os

import pytest

from segflow.core.resources import DBT_PROJECT_DIR


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from dbt.cli.main import dbtRunner

    root = tmp_path_factory.mktemp("dbt_parse")
    env = {
        "SEGFLOW_WAREHOUSE_PATH": str(root / "w.duckdb"),
        "DBT_TARGET_PATH": str(root / "target"),
        "DBT_LOG_PATH": str(root / "logs"),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = dbtRunner().invoke(
            [
                "parse",
                "--project-dir",
                str(DBT_PROJECT_DIR),
                "--profiles-dir",
                str(DBT_PROJECT_DIR),
                "--no-partial-parse",
                "--quiet",
            ]
        )
        assert result.success, result.exception
        return json.loads((root / "target" / "manifest.json").read_text())
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def models(manifest) -> dict[str, dict]:
    return {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model"}


def test_sources_are_read_in_staging_only(manifest):
    for name, node in models(manifest).items():
        if node["depends_on"]["nodes"] and any(d.startswith("source.") for d in node["depends_on"]["nodes"]):
            assert node["original_file_path"].startswith("models/staging/"), f"{name} reads a source outside staging"
            assert name.startswith(("stg_", "base_")), name


def test_no_orphan_models(manifest):
    used = {d for n in manifest["nodes"].values() for d in n["depends_on"].get("nodes", [])}
    used |= {d for e in manifest["exposures"].values() for d in e["depends_on"]["nodes"]}
    for name, node in models(manifest).items():
        published = node["original_file_path"].startswith(("models/marts/", "models/ml/"))
        assert published or node["unique_id"] in used, f"{name} is built but nothing reads it"


def test_each_base_model_feeds_its_staging_model(manifest):
    nodes = models(manifest)
    for name in [n for n in nodes if n.startswith("base_")]:
        children = [m for m, node in nodes.items() if f"model.segflow.{name}" in node["depends_on"]["nodes"]]
        assert children == ["stg_" + name.removeprefix("base_")], (name, children)


def test_python_written_tables_are_declared_sources(manifest):
    from segflow.core import tables

    declared = {f"{s['schema']}.{s['name']}" for s in manifest["sources"].values()}
    for table in (
        tables.SCORES_TABLE,
        tables.VALIDATION_RESULTS_TABLE,
        tables.MONITORING_TABLE,
        tables.MODEL_REFERENCES_TABLE,
    ):
        assert table in declared, table
    assert {
        "raw.crm_contacts",
        "raw.events",
        "raw.transactions",
        "raw.sources",
        "raw.load_audit",
        "raw.quarantine",
        "raw.loaded_files",
    } <= declared


def test_exposures_name_what_their_consumers_read(manifest):
    parents = {e["name"]: {d.split(".")[-1] for d in e["depends_on"]["nodes"]} for e in manifest["exposures"].values()}
    assert parents["crm_segment_writeback"] == {"user_scores", "user_features"}
    assert parents["activation_export"] == {"user_scores", "user_features"}
    assert {"user_features_history", "churn_training_set", "user_scores_history"} <= parents[
        "ml_persona_and_churn_models"
    ]


def test_every_model_has_its_own_yml_beside_it(manifest):
    for name, node in models(manifest).items():
        yml = node.get("patch_path") or ""
        assert yml.endswith(f"/{name}.yml"), f"{name} is documented in {yml or 'no yml'}"


def test_a_run_for_another_date_reparses_only_the_audit_models(tmp_path, make_settings, monkeypatch):
    """The dates reach dbt as environment variables (segflow.core.dbt.DATE_ENV), not --vars: the next date's
    invocation keeps dbt's partial parse and re-parses just the models whose schema is the date's audit schema
    (each with its yml) instead of the whole project."""
    from segflow.core.dbt import DATE_ENV, dbt_vars, run_dbt

    for name in DATE_ENV.values():
        monkeypatch.setenv(name, "")  # run_dbt sets them in this process: removed again after the test
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    monkeypatch.setenv("DBT_LOG_PATH", str(tmp_path / "logs"))
    settings = make_settings(tmp_path, tmp_path / "data")
    audit = {"audit_user_features", "audit_user_segments", "int_users_featurised"}
    parsed = []
    for day in ("2026-09-01", "2026-09-02"):
        run_dbt(settings, ["parse", "--quiet"], vars=dbt_vars(day, settings))
        perf = json.loads((tmp_path / "target" / "perf_info.json").read_text())
        assert perf["is_partial_parse_enabled"]
        parsed.append(perf["parsed_path_count"])
        nodes = models(json.loads((tmp_path / "target" / "manifest.json").read_text()))
        schema = "audit_" + day.replace("-", "")
        assert {nodes[n]["schema"] for n in audit} == {schema, f"{schema}_intermediate"}
        assert nodes["user_features"]["schema"] == "marts"
        dated = [n for n, node in nodes.items() if node["schema"] in (schema, f"{schema}_intermediate")]
    assert 8 <= len(dated) <= 16, dated
    assert parsed[0] == perf["path_count"] and parsed[1] <= 2 * len(dated), (parsed, dated)
