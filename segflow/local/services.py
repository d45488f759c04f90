"""`segflow ui` (make ui / make ui-stop): the local web UIs and the Airflow services behind them.

Started: Airflow's api-server (UI + execution API), scheduler, dag-processor and triggerer, and `ui.celery_workers`
Celery workers when Airflow's executor is the CeleryExecutor (AIRFLOW__CORE__EXECUTOR, with its broker and result
backend configured the same way); the MLflow UI over the project's tracking store, unless `mlflow.tracking_uri`
is already an MLflow server (http/https); a static server for the dbt docs (/) and GX Data Docs (/gx/). Each runs in its
own process group (the segment API too: `segflow serve`, and the real-time trigger consumer `segflow stream` when
stream.url is set); their ids go to `<ui.state_dir>/processes.json`, so `stop` ends exactly what `start`
started (a recorded id now held by a process with another start time is someone else's and is left alone),
and logs to `<ui.state_dir>/logs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from segflow.core.config import Settings

AIRFLOW_USER = "admin"


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    health_url: str | None = None  # polled until it answers 200; None: the process staying up is enough


def ui_settings(settings: Settings) -> dict:
    return dict(settings.get("ui", default={}) or {})


def urls(settings: Settings) -> dict[str, str]:
    ui = ui_settings(settings)
    host = ui["host"]
    return {
        "airflow": f"http://{host}:{ui['airflow_port']}/",
        "mlflow": settings.mlflow_tracking_uri.rstrip("/") + "/"
        if mlflow_server(settings)
        else f"http://{host}:{ui['mlflow_port']}/",
        "dbt_docs": f"http://{host}:{ui['docs_port']}/",
        "gx_data_docs": f"http://{host}:{ui['docs_port']}/gx/",
        "segment_api": f"http://{host}:{settings.get('serving', 'port')}/",
    }


def passwords_file(settings: Settings) -> Path:
    """Where Airflow's simple auth manager keeps the password it generates for AIRFLOW_USER."""
    from segflow.airflow.environment import airflow_home

    return airflow_home(settings) / "simple_auth_manager_passwords.json.generated"


def service_environ(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Airflow's environment plus what its components need to find each other and to log in."""
    from segflow.airflow.environment import airflow_environ

    ui = ui_settings(settings)
    base = dict(os.environ if environ is None else environ)
    env = {**base, **airflow_environ(settings, base)}
    api = f"http://{ui['host']}:{ui['airflow_port']}"
    env.setdefault("AIRFLOW__API__BASE_URL", api)
    # Task processes report to the execution API of this api-server (not the default localhost:8080).
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"{api}/execution/")
    # The scheduler's and triggerer's log servers (the UI reads task logs from them), on localhost only.
    env.setdefault("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(ui["log_server_port"]))
    env.setdefault("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(ui["trigger_log_server_port"]))
    env.setdefault("AIRFLOW__CORE__HOSTNAME_CALLABLE", "segflow.local.services.ui_hostname")
    env.setdefault("SEGFLOW_UI_HOST", ui["host"])
    # Tasks that write the warehouse run one at a time anyway (pool duckdb_writer): a few workers suffice.
    env.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
    env.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", f"{AIRFLOW_USER}:admin")
    env.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords_file(settings)))
    return env


def secret_file(path: Path) -> Path:
    """Create `path` (empty) readable by its owner only, or make an existing one so. Writers that open it for
    appending (Airflow's password file, the service logs) keep the mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    return path


def ui_hostname() -> str:
    """Airflow's hostname_callable: task logs are fetched from this host, where the log servers listen."""
    return os.environ.get("SEGFLOW_UI_HOST", "127.0.0.1")


def mlflow_server(settings: Settings) -> bool:
    """Whether the tracking URI is an MLflow server already running (the production stack's), not a store."""
    return settings.mlflow_tracking_uri.startswith(("http://", "https://"))


def celery(environ: dict[str, str]) -> bool:
    return environ.get("AIRFLOW__CORE__EXECUTOR", "").rsplit(".", 1)[-1] == "CeleryExecutor"


def services(settings: Settings, environ: dict[str, str] | None = None) -> list[Service]:
    """The processes `start` runs for these settings and this (service) environment."""
    ui = ui_settings(settings)
    host = ui["host"]
    bin_dir = Path(sys.executable).parent
    airflow = str(bin_dir / "airflow")
    artifact_root = str(settings.get("mlflow", "artifact_root"))
    workers = [
        # Task logs stay in the shared log folder, where the api-server reads them: no log server per worker.
        Service(
            f"airflow-celery-worker-{i}",
            [airflow, "celery", "worker", "--celery-hostname", f"worker{i}@%h", "--skip-serve-logs"],
        )
        for i in range(1, int(ui["celery_workers"]) + 1)
        if celery(os.environ if environ is None else environ)
    ]
    tracking = (
        []
        if mlflow_server(settings)
        else [
            Service(
                "mlflow",
                [
                    str(bin_dir / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    settings.mlflow_tracking_uri,
                    "--default-artifact-root",
                    artifact_root,
                    "--host",
                    host,
                    "--port",
                    str(ui["mlflow_port"]),
                    "--workers",
                    "1",
                ],
                f"http://{host}:{ui['mlflow_port']}/health",
            )
        ]
    )
    # The real-time trigger consumer, when a stream is configured (it needs a Redis: stream.url).
    stream = (
        [
            Service(
                "stream-consumer",
                [
                    sys.executable,
                    "-m",
                    "segflow.local.cli",
                    *(["--config", str(settings.config_file)] if settings.config_file else []),
                    "stream",
                    "run",
                ],
            )
        ]
        if settings.get("stream", "url")
        else []
    )
    return [
        Service(
            "airflow-api-server",
            [airflow, "api-server", "--host", host, "--port", str(ui["airflow_port"]), "--workers", "1"],
            f"http://{host}:{ui['airflow_port']}/api/v2/monitor/health",
        ),
        Service("airflow-scheduler", [airflow, "scheduler"]),
        Service("airflow-dag-processor", [airflow, "dag-processor"]),
        Service("airflow-triggerer", [airflow, "triggerer"]),
        *workers,
        *tracking,
        Service(
            "docs",
            [
                sys.executable,
                "-m",
                "segflow.local.docs_server",
                str(ui["docs_port"]),
                "--bind",
                host,
                "--directory",
                str(ui["docs_dir"]),
            ],
            f"http://{host}:{ui['docs_port']}/",
        ),
        Service(
            "segment-api",
            [
                sys.executable,
                "-m",
                "segflow.local.cli",
                *(["--config", str(settings.config_file)] if settings.config_file else []),
                "serve",
                "--host",
                host,
                "--port",
                str(settings.get("serving", "port")),
            ],
            f"http://{host}:{settings.get('serving', 'port')}/healthz",
        ),
        *stream,
    ]


def demo_api_key(settings: Settings) -> str:
    """The key `segflow ui start` prints: kept (owner-only) in the state dir, created again when revoked."""
    from segflow.serving import keys

    path = secret_file(Path(settings.get("ui", "state_dir")) / "demo_api_key")
    key = path.read_text().strip()
    keys_file = Path(settings.get("serving", "keys_file"))
    if not key or keys.verify_key(keys_file, key) is None:
        key, _ = keys.create_key(keys_file, keys.SCOPES, "demo key of segflow ui")
        path.write_text(key + "\n")
    return key


def state_file(settings: Settings) -> Path:
    return Path(ui_settings(settings)["state_dir"]) / "processes.json"


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, it names one process for good.
    None if there is no such process or it has exited (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _alive(record: dict) -> bool:
    """The recorded process is still the one `start` launched (a reused pid is someone else's)."""
    return _start_ticks(record["pid"]) == record["started"]


def read_state(settings: Settings) -> list[dict]:
    path = state_file(settings)
    return json.loads(path.read_text()) if path.exists() else []


def running(settings: Settings) -> list[dict]:
    """The recorded services still running."""
    return [r for r in read_state(settings) if _alive(r)]


def airflow_login(settings: Settings) -> tuple[str, str | None]:
    """The Airflow user and the password the api-server generated for it (None until it has started)."""
    path = passwords_file(settings)
    try:
        return AIRFLOW_USER, json.loads(path.read_text()).get(AIRFLOW_USER)
    except (OSError, ValueError):
        return AIRFLOW_USER, None


def start(settings: Settings, timeout: float = 180.0, environ: dict[str, str] | None = None) -> list[dict]:
    """Start every service not already running; wait until each answers. Refuses a port taken by another program."""
    from segflow.airflow.environment import ensure_metadata_db

    already = {r["name"]: r for r in running(settings)}
    env = service_environ(settings, environ)
    wanted = [s for s in services(settings, env) if s.name not in already]
    ui = ui_settings(settings)
    for name, port in (
        ("airflow-api-server", ui["airflow_port"]),
        ("mlflow", ui["mlflow_port"]),
        ("docs", ui["docs_port"]),
    ):
        if name in {s.name for s in wanted} and not _port_free(ui["host"], int(port)):
            raise RuntimeError(
                f"port {ui['host']}:{port} for {name} is taken by another program: "
                f"free it or set ui.{'airflow_port' if name.startswith('airflow') else name + '_port'}"
            )
    os.environ.update({k: v for k, v in env.items() if k.startswith(("AIRFLOW", "SEGFLOW", "MLFLOW"))})
    ensure_metadata_db(settings)
    Path(ui["docs_dir"]).mkdir(parents=True, exist_ok=True)
    logs = Path(ui["state_dir"]) / "logs"
    # The generated Airflow password lands in its file and in the api-server's log: both are secrets.
    logs.mkdir(parents=True, exist_ok=True)
    logs.chmod(0o700)
    secret_file(passwords_file(settings))
    records = list(already.values())
    try:
        _launch(settings, wanted, records, env, logs, timeout)
    except BaseException:
        stop(settings)  # a half-started stack would hold ports and the metadata DB
        raise
    return records


def _launch(
    settings: Settings, wanted: list[Service], records: list[dict], env: dict[str, str], logs: Path, timeout: float
) -> None:
    for service in wanted:
        with open(secret_file(logs / f"{service.name}.log"), "ab") as log:
            process = subprocess.Popen(
                service.argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        records.append(
            {
                "name": service.name,
                "pid": process.pid,
                "started": _start_ticks(process.pid),
                "argv": service.argv,
                "health_url": service.health_url,
            }
        )
        state_file(settings).write_text(json.dumps(records, indent=2))
    deadline = time.monotonic() + timeout
    for record in records:
        while record["health_url"] and not _answers(record["health_url"]):
            if not _alive(record):
                raise RuntimeError(f"{record['name']} exited: see {logs / (record['name'] + '.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{record['name']} did not answer {record['health_url']} within {timeout:.0f}s")
            time.sleep(1)
        if not _alive(record):
            raise RuntimeError(f"{record['name']} exited: see {logs / (record['name'] + '.log')}")


def stop(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Stop the process groups `start` recorded (TERM, then KILL after `timeout`); returns their names."""
    stopped = []
    records = [r for r in read_state(settings) if _alive(r)]
    for record in records:
        try:
            os.killpg(record["pid"], signal.SIGTERM)
        except ProcessLookupError:
            continue
        stopped.append(record["name"])
    deadline = time.monotonic() + timeout
    for record in records:
        while _alive(record) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record["pid"], signal.SIGKILL)
    state_file(settings).unlink(missing_ok=True)
    return stopped
