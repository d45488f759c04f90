"""Publishing is all-or-nothing: a run killed (SIGKILL of its whole process group) in the middle of publishing
leaves readers on the previous set of marts - never features of the new date beside segments of the old one - and
a rerun publishes the new set whole, once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import duckdb
import pytest

from segflow.synthetic.generator import generate
from tests.conftest import AS_OF
from tests.e2e.test_pipeline import TEAM_CONFIG, run_cli

pytestmark = pytest.mark.e2e
D1, D2 = AS_OF - timedelta(days=1), AS_OF
PUBLISHED = [
    "user_features",
    "user_features_history",
    "user_segments",
    "user_segment_history",
    "segment_membership_events",
    "segment_sizes_over_time",
    "user_identity_links",
]
# The first table a publish writes; killing right after it used to leave the others on the previous date.
FIRST_WRITE = "OK created sql incremental model marts_store.store_user_features_history"


def latest_dates(warehouse) -> dict[str, object]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return {t: con.execute(f"SELECT max(as_of) FROM marts.{t}").fetchone()[0] for t in PUBLISHED}


def test_a_run_killed_inside_the_publish_leaves_the_previous_set(tmp_path):
    generate(tmp_path / "data", users=400, days=150, seed=3, end_date=AS_OF)
    (tmp_path / "segflow.yml").write_text(TEAM_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGFLOW__")}
    env.update(
        SEGFLOW_CONFIG=str(tmp_path / "segflow.yml"), SEGFLOW_TASK_RETRIES="0", MPLCONFIGDIR=str(tmp_path / "mpl")
    )
    first = run_cli(["run", "--as-of", D1.isoformat()], env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:]
    warehouse = tmp_path / "warehouse.duckdb"
    assert set(latest_dates(warehouse).values()) == {D1}

    log = tmp_path / "airflow" / "logs" / f"segflow-run-{D2}.log"
    run = subprocess.Popen(
        [sys.executable, "-m", "segflow.local.cli", "run", "--as-of", D2.isoformat(), "--retrain", "never"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    try:
        while FIRST_WRITE not in (log.read_text(errors="replace") if log.exists() else ""):
            assert run.poll() is None, "the run ended before publishing"
            assert time.monotonic() < deadline, "the publish never started"
            time.sleep(0.02)
        os.killpg(run.pid, signal.SIGKILL)  # the whole run: Airflow, the task, dbt
    finally:
        run.wait(timeout=60)

    # Killed inside the publish: the new date's rows were written, but readers still see the previous set.
    with duckdb.connect(str(warehouse), read_only=True) as con:
        stored = con.execute(
            "SELECT count(*) FROM marts_store.store_user_features_history WHERE as_of = ?", [D2]
        ).fetchone()[0]
    assert stored > 0, "the kill came after the first published table was written"
    assert latest_dates(warehouse) == dict.fromkeys(PUBLISHED, D1)

    rerun = run_cli(["run", "--as-of", D2.isoformat(), "--retrain", "never"], env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert latest_dates(warehouse) == dict.fromkeys(PUBLISHED, D2)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        dupes = con.execute(
            "SELECT count(*) - count(DISTINCT (user_id, as_of)) FROM marts.user_features_history"
        ).fetchone()[0]
        partitions = dict(
            con.execute(
                "SELECT as_of, count(DISTINCT _publish_id) FROM marts_store.store_user_features_history GROUP BY 1"
            ).fetchall()
        )
    assert dupes == 0
    # The killed run's rows are gone; one publication per date is stored (training added past dates of its own).
    assert partitions[D1] == partitions[D2] == 1 and set(partitions.values()) == {1}
