"""Every DAG file imports cleanly, has no cycles, sets retries, and stays thin (no I/O at parse time)."""

from __future__ import annotations

import os

import pytest

from segflow.airflow.environment import DAGS_FOLDER

DAG_FILES = sorted(p.name for p in DAGS_FOLDER.glob("*.py"))
EXPECTED_DAGS = {"segflow_build", "segflow_train", "segflow_score", "segflow_activate"}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    from segflow.airflow.environment import airflow_environ
    from segflow.core.config import load_settings

    root = tmp_path_factory.mktemp("integrity")
    saved = dict(os.environ)
    os.environ["SEGFLOW__AIRFLOW__HOME"] = str(root / "airflow")
    os.environ["SEGFLOW__WAREHOUSE__PATH"] = str(root / "warehouse.duckdb")
    settings = load_settings()
    os.environ.update(airflow_environ(settings))
    os.environ.pop("SEGFLOW_TASK_RETRIES", None)
    from airflow.dag_processing.dagbag import DagBag

    yield DagBag(dag_folder=str(DAGS_FOLDER))
    os.environ.clear()
    os.environ.update(saved)


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_expected_dags_present(dagbag):
    assert set(dagbag.dag_ids) == EXPECTED_DAGS


@pytest.mark.parametrize("dag_file", DAG_FILES)
def test_each_file_defines_one_dag(dagbag, dag_file):
    assert sum(1 for d in dagbag.dags.values() if d.fileloc.endswith(dag_file)) == 1


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_no_cycles_and_retries_everywhere(dagbag, dag_id):
    from airflow.utils.dag_cycle_tester import check_cycle

    dag = dagbag.dags[dag_id]
    check_cycle(dag)
    assert dag.max_active_runs == 1, "DuckDB takes one writer: runs of a DAG must not overlap"
    for task in dag.tasks:
        assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
        assert task.execution_timeout is not None, f"{dag_id}.{task.task_id} has no timeout"
        assert task.on_failure_callback, f"{dag_id}.{task.task_id} has no failure callback"
        # Depth first: a started run's next step goes before another run's first (backfills finish in order).
        assert task.weight_rule == "upstream", f"{dag_id}.{task.task_id} is not scheduled depth first"


def test_duckdb_writers_share_the_single_slot_pool(dagbag):
    writers = {
        ("segflow_build", "extract"),
        ("segflow_build", "apply_erasures"),
        ("segflow_build", "validate_raw"),
        ("segflow_build", "dbt_build"),
        ("segflow_build", "dbt_publish"),
        ("segflow_train", "train_models"),
        ("segflow_score", "score_users"),
        ("segflow_score", "write_back"),
        ("segflow_score", "sync_serving"),
        ("segflow_score", "monitor_drift"),
    }
    for dag_id, task_id in writers:
        assert dagbag.dags[dag_id].get_task(task_id).pool == "duckdb_writer"


def test_write_audit_publish_order(dagbag):
    dag = dagbag.dags["segflow_build"]
    # Nothing is published before the marts quality gate has passed, which follows the audit build.
    assert dag.get_task("dbt_build").exclude == "tag:training tag:publish tag:triggers"
    assert dag.get_task("dbt_publish").select == "tag:publish"
    for task_id in ("dbt_build", "dbt_publish"):  # unit tests run in CI, not in every scheduled build
        assert dag.get_task(task_id).dbt_cmd_flags == ["--exclude-resource-type", "unit_test"]
        # dbt's partial-parse state is kept between the two (Cosmos' cache), so publishing does not re-parse all.
        assert dag.get_task(task_id).cache_dir.name == "segflow_build"
    assert "validate_marts" in dag.get_task("dbt_publish").get_flat_relative_ids(upstream=True)
    assert "dbt_build" in dag.get_task("validate_marts").get_flat_relative_ids(upstream=True)
    # Erasure requests are applied before anything is validated or built from the raw layer.
    assert "apply_erasures" in dag.get_task("validate_raw").get_flat_relative_ids(upstream=True)
    assert "extract" in dag.get_task("apply_erasures").get_flat_relative_ids(upstream=True)


def test_assets_chain_build_to_score_and_train_to_its_own_schedule(dagbag):
    score, train, build = (dagbag.dags[d] for d in ("segflow_score", "segflow_train", "segflow_build"))
    assert [a.name for a in build.get_task("publish_features").outlets] == ["segflow.marts.user_features"]
    assert "segflow.marts.user_features" in str(score.timetable.asset_condition)
    assert (build.schedule, train.schedule) == ("@daily", "@weekly")
    assert set(build.params) == {"as_of", "full_refresh"} and set(train.params) == {"as_of"}


def test_activation_is_scheduled_on_the_stream_triggers_watched_on_redis(dagbag, monkeypatch):
    """Without a stream the asset is plain; with stream.url an AssetWatcher subscribes (through the triggerer) to
    the consumer's announcement channel with the connection Airflow's environment derives from stream.url."""
    from segflow.airflow.assets import TRIGGERS_URI, stream_triggers
    from segflow.airflow.environment import airflow_environ, redis_connection_uri
    from segflow.core.config import load_settings

    activate = dagbag.dags["segflow_activate"]
    assert TRIGGERS_URI in str(activate.timetable.asset_condition)
    assert [t.task_id for t in activate.tasks] == ["deliver_triggers"]
    assert stream_triggers().watchers == []
    monkeypatch.setenv("SEGFLOW__STREAM__URL", "redis://:s3cret@127.0.0.1:6379/3")
    monkeypatch.setenv("SEGFLOW__STREAM__KEY_PREFIX", "shop")
    (watcher,) = stream_triggers().watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "airflow.providers.redis.triggers.redis_await_message.AwaitMessageTrigger"
    assert kwargs["channels"] == ["shop:triggers:notify"] and kwargs["redis_conn_id"] == "segflow_stream"
    assert kwargs["poll_interval"] == 1
    assert redis_connection_uri("redis://:s3cret@127.0.0.1:6379/3") == "redis://:s3cret@127.0.0.1:6379?db=3"
    assert airflow_environ(load_settings())["AIRFLOW_CONN_SEGFLOW_STREAM"] == "redis://:s3cret@127.0.0.1:6379?db=3"


def test_dag_files_are_thin():
    forbidden = ("import pandas", "import duckdb", "import mlflow", "import sklearn", "read_sql", "connect(")
    for name in DAG_FILES:
        text = (DAGS_FOLDER / name).read_text()
        assert not any(f in text for f in forbidden), name
        assert len(text) < 8_000, name
