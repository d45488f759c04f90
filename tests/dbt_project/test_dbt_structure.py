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
