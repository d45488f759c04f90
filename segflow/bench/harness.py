"""Benchmark harness: cached datasets, one workspace per size, every stage measured in its own process.

Per size N (users), with a dataset of `days` daily files ending on END_DATE:
1. full: the pipeline's stages one by one as of END_DATE - 1 (365 days of data), full refresh, then training;
2. baseline: the feature model's inputs exported, user_features recomputed in pandas and compared with dbt's;
3. incremental: the next day (END_DATE) - its file, CRM changes, an incremental dbt build - then scoring;
4. airflow: the whole pipeline for that day through Airflow's DAG runner (`segflow run --retrain always`: build,
   training, scoring DAGs) on the same warehouse: what a scheduled day with retraining costs, orchestration
   included. (The first load from an empty warehouse is phase 1, stage by stage.)
A stage is measured with os.wait4 on its process: wall time, user+system CPU time, peak RSS (of the process
and anything it waited for).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from segflow.core.config import REPO_ROOT

END_DATE = date(2026, 9, 30)
DAYS = 366  # 365 days for the full build, then one more for the incremental run
SEED = 42
# Scale the demo's synthetic users to ~30 events and ~3 orders per user and year (the issue's 1M-user shape).
EVENT_SCALE = 0.29
PURCHASE_SCALE = 0.6
FULL_STAGES = (
    "extract",
    "validate_raw",
    "dbt_build",
    "validate_marts",
    "dbt_publish",
    "train",
    "score",
    "monitor",
    "write_back",
)
BUILD_STAGES = ("extract", "validate_raw", "dbt_build", "validate_marts", "dbt_publish")  # the daily build DAG
INCREMENTAL_STAGES = (
    "extract",
    "validate_raw",
    "dbt_build",
    "validate_marts",
    "dbt_publish",
    "score",
    "monitor",
    "write_back",
)
# The segment API, on the incremental run's published state; the stream consumer, on synthetic users' state.
SERVING_STAGES = ("serving_sync", "serving_load", "stream_load")
VERSIONED = (
    "duckdb",
    "dbt-core",
    "dbt-duckdb",
    "apache-airflow",
    "astronomer-cosmos",
    "great-expectations",
    "mlflow",
    "scikit-learn",
    "pandas",
    "numpy",
    "pyarrow",
    "fastapi",
    "uvicorn",
    "redis",
)


@dataclass
class Measurement:
    stage: str
    phase: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    rows: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float | None:
        return round(self.rows / self.wall_s, 1) if self.rows and self.wall_s > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": self.rows_per_s}


class StageFailed(RuntimeError):
    pass


def measure(cmd: list[str], env: dict[str, str], log_file: Path) -> tuple[int, float, float, float]:
    """Run `cmd` to completion: (exit code, wall s, CPU s, peak RSS MB) of that process and its waited-for children."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), 0
    )
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "cpu": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# --- datasets -------------------------------------------------------------------------------------


def dataset_params(users: int, days: int = DAYS) -> dict[str, Any]:
    return {
        "users": users,
        "days": days,
        "seed": SEED,
        "end_date": END_DATE.isoformat(),
        "event_scale": EVENT_SCALE,
        "purchase_scale": PURCHASE_SCALE,
    }


def cached_dataset(cache_dir: Path, params: dict[str, Any]) -> Path | None:
    """The cached dataset generated with exactly `params`, if any (manifest.json is written last)."""
    path = cache_dir / f"users-{params['users']}-days-{params['days']}"
    manifest = path / "manifest.json"
    if not manifest.exists():
        return None
    written = json.loads(manifest.read_text())
    return path if all(str(written.get(k)) == str(v) for k, v in params.items()) else None


def ensure_dataset(
    cache_dir: Path, params: dict[str, Any], env: dict[str, str], log_file: Path
) -> tuple[Path, Measurement | None]:
    path = cached_dataset(cache_dir, params)
    if path is not None:
        return path, None
    path = cache_dir / f"users-{params['users']}-days-{params['days']}"
    shutil.rmtree(path, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "segflow.local.cli",
        "generate",
        "--out",
        str(path),
        "--users",
        str(params["users"]),
        "--days",
        str(params["days"]),
        "--seed",
        str(params["seed"]),
        "--end-date",
        params["end_date"],
        "--event-scale",
        str(params["event_scale"]),
        "--purchase-scale",
        str(params["purchase_scale"]),
    ]
    code, wall, cpu, rss = measure(cmd, env, log_file)
    if code:
        raise StageFailed(f"generating {path} failed (exit {code}); see {log_file}")
    manifest = json.loads((path / "manifest.json").read_text())
    return path, Measurement(
        "generate",
        "data",
        round(wall, 2),
        round(cpu, 2),
        round(rss, 1),
        manifest["events"] + manifest["orders"] + manifest["users"],
    )


# --- workspaces -----------------------------------------------------------------------------------


def workspace_env(root: Path, data: Path) -> dict[str, str]:
    """Environment of a stage: every store under `root`, sources read from the cached dataset `data` (the CRM is
    copied, since the write-back adds a table to it; its manifest goes along, so the extract still knows the data
    is generated and may use the development PII salt)."""
    from segflow.airflow.environment import airflow_environ
    from segflow.core.config import load_settings, stores_under

    crm = root / "crm.sqlite"
    if not crm.exists():
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data / "crm.sqlite", crm)
        shutil.copy2(data / "manifest.json", root / "manifest.json")
    overrides = {
        "SEGFLOW_CONFIG": str(REPO_ROOT / "segflow.yml"),
        "SEGFLOW__SOURCES__CRM__URL": f"sqlite:///{crm}",
        "SEGFLOW__SOURCES__EVENTS__PATH": str(data / "events"),
        "SEGFLOW__SOURCES__TRANSACTIONS__PATH": str(data / "transactions"),
        **stores_under(root, f"sqlite:///{crm}"),
        "SEGFLOW_TASK_RETRIES": "0",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
    }
    # The bench's own knobs (SEGFLOW_BENCH_*) reach the stages; every other setting comes from the overrides.
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("SEGFLOW_BENCH_") or not k.startswith(("SEGFLOW", "AIRFLOW__", "DBT_"))
    }
    env.update(overrides)
    settings = load_settings(REPO_ROOT / "segflow.yml", environ=env)
    env.update(airflow_environ(settings, env))
    return env


class SizeRun:
    """Runs and records every phase for one dataset size."""

    def __init__(self, users: int, data: Path, work_dir: Path, progress: Callable[[str], None] = print):
        self.users = users
        self.data = data
        self.root = work_dir / f"users-{users}"
        self.progress = progress
        self.measurements: list[Measurement] = []
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.log_file = self.root / "bench.log"

    def stage(self, workspace: str, stage: str, phase: str, as_of: date, full_refresh: bool = False) -> Measurement:
        root = self.root / workspace
        env = workspace_env(root, self.data)
        result_file = root / f"{phase}-{stage}.json"
        cmd = [sys.executable, "-m", "segflow.bench.stages", stage, as_of.isoformat(), str(result_file)]
        if full_refresh:
            cmd.append("--full-refresh")
        code, wall, cpu, rss = measure(cmd, env, self.log_file)
        if code:
            # Recorded, not fatal: a stage that fails at one size (out of memory, say) is a result too.
            reason = "killed (out of memory?)" if code < 0 else f"exit {code}"
            m = Measurement(
                stage,
                phase,
                round(wall, 2),
                round(cpu, 2),
                round(rss, 1),
                None,
                {"failed": f"{reason}; see {self.log_file}"},
            )
            self.measurements.append(m)
            self.progress(
                f"  {self.users:>9,} users  {phase:<11} {stage:<15} FAILED ({reason}) after {wall:.1f} s, {rss:.0f} MB"
            )
            return m
        details = json.loads(result_file.read_text())
        rows = details.pop("rows", None)
        m = Measurement(stage, phase, round(wall, 2), round(cpu, 2), round(rss, 1), rows, details)
        self.measurements.append(m)
        self.progress(
            f"  {self.users:>9,} users  {phase:<11} {stage:<15} {wall:8.1f} s  {cpu:8.1f} s CPU  {rss:8.0f} MB"
        )
        return m

    def airflow(self, as_of: date) -> Measurement:
        """The whole day through Airflow, as the scheduler runs it: build, retraining and scoring DAGs on the
        warehouse the earlier phases left (a year of history), for the incremental run's date again."""
        root = self.root / "pipeline"
        env = workspace_env(root, self.data)
        cmd = [sys.executable, "-m", "segflow.local.cli", "run", "--as-of", as_of.isoformat(), "--retrain", "always"]
        console = root / "segflow-run.out"
        code, wall, cpu, rss = measure(cmd, env, console)
        details: dict[str, Any] = {"dags": dag_seconds(console.read_text())}
        if code:
            details["failed"] = f"exit {code}; see {console}"
        m = Measurement("segflow run", "airflow", round(wall, 2), round(cpu, 2), round(rss, 1), None, details)
        self.measurements.append(m)
        self.progress(
            f"  {self.users:>9,} users  airflow     segflow run     {wall:8.1f} s  {cpu:8.1f} s CPU  {rss:8.0f} MB"
        )
        return m


def dag_seconds(console_output: str) -> dict[str, int]:
    """The per-DAG times `segflow run` prints (✓ segflow_build (46s))."""
    import re

    return {m.group(1): int(m.group(2)) for m in re.finditer(r"✓\s+(segflow_\w+)\s+\((\d+)s\)", console_output)}


def run_size(
    users: int,
    cache_dir: Path,
    work_dir: Path,
    days: int = DAYS,
    airflow: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    params = dataset_params(users, days)
    env = {**os.environ}
    work_dir.mkdir(parents=True, exist_ok=True)
    data, generated = ensure_dataset(cache_dir, params, env, work_dir / f"generate-{users}.log")
    manifest = json.loads((data / "manifest.json").read_text())
    end = date.fromisoformat(manifest["end_date"])
    full_as_of, next_day = end - timedelta(days=1), end
    run = SizeRun(users, data, work_dir, progress)
    if generated:
        run.measurements.append(generated)
        progress(f"  {users:>9,} users  data        generate        {generated.wall_s:8.1f} s")
    for stage in FULL_STAGES:
        run.stage("pipeline", stage, "full", full_as_of, full_refresh=stage in ("extract", "dbt_build"))
    run.stage("pipeline", "baseline_inputs", "baseline", full_as_of)
    run.stage("pipeline", "pandas_baseline", "baseline", full_as_of)
    for stage in INCREMENTAL_STAGES:
        run.stage("pipeline", stage, "incremental", next_day)
    for stage in SERVING_STAGES:
        run.stage("pipeline", stage, "serving", next_day)
    if airflow:
        run.airflow(next_day)
    return {
        "users": users,
        "dataset": {
            k: manifest[k]
            for k in (
                "users",
                "days",
                "start_date",
                "end_date",
                "events",
                "orders",
                "seed",
                "event_scale",
                "purchase_scale",
            )
        },
        "as_of": {"full": full_as_of.isoformat(), "incremental": next_day.isoformat()},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "stages": [m.as_dict() for m in run.measurements],
    }


def write_result(result: dict[str, Any], results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"users-{result['users']}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    return sorted((json.loads(p.read_text()) for p in results_dir.glob("users-*.json")), key=lambda r: r["users"])
