"""segflow command line: generate data, run the pipeline through Airflow, print the summary.

Airflow's configuration must be in the environment before Airflow is imported, so every command that
touches Airflow calls `apply_environ()` first and imports Airflow lazily.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

from segflow.core.config import REPO_ROOT, load_settings, redact_url


def _console(file=None):
    """The console; `file` keeps it on the real terminal while a DAG's output is redirected to its log."""
    from rich.console import Console

    return Console(file=file, soft_wrap=True)


def cmd_generate(args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from segflow.synthetic.generator import generate

    out = Path(args.out)
    started = time.time()
    with Progress(
        TextColumn("generating"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} days"),
        TimeElapsedColumn(),
        console=_console(),
        transient=True,
        disable=not sys.stdout.isatty(),
    ) as progress:
        bar = progress.add_task("days", total=args.days)
        optional = {
            "end_date": date.fromisoformat(args.end_date) if args.end_date else None,
            "horizon_days": args.horizon_days,
            "event_scale": args.event_scale,
            "purchase_scale": args.purchase_scale,
        }  # unset: the generator's own defaults
        result = generate(
            out,
            users=args.users,
            days=args.days,
            seed=args.seed,
            dirty_rate=args.dirty_rate,
            crm_url=args.crm_url,
            progress=lambda _s, done, _t: progress.update(bar, completed=done),
            **{k: v for k, v in optional.items() if v is not None},
        )
    print(
        f"generated {result.users:,} users ({result.contacts_rows:,} CRM rows), {result.events:,} events, "
        f"{result.orders:,} orders, {result.start_date} .. {result.end_date} into {out} in {time.time() - started:.1f}s"
    )
    return 0


def _prepare_airflow(config: str | None):
    settings = load_settings(config)
    from segflow.airflow.environment import apply_environ, ensure_metadata_db

    apply_environ(settings)
    ensure_metadata_db(settings)
    return settings


def cmd_init(args) -> int:
    settings = _prepare_airflow(args.config)
    print(
        f"Airflow metadata DB and pool ready (AIRFLOW_HOME={os.environ['AIRFLOW_HOME']}, "
        f"warehouse={redact_url(settings.warehouse_url)})"
    )
    return 0


@contextlib.contextmanager
def redirect_output(log_file: Path):
    """Send everything Airflow, dbt and the tasks print (at the file-descriptor level, so structlog and
    subprocesses too) to `log_file`; the console keeps only segflow's own progress lines."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "a") as sink:
        os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


class ProgressPrinter:
    """Prints the task events the DAGs' callbacks write to a pipe (segflow.airflow.progress) while a DAG runs
    in-process with its output redirected to the log file."""

    def __init__(self, console):
        self.console = console
        self.failures: list[dict] = []
        self.tasks_run = 0

    def __call__(self, event: dict) -> None:
        task = event.get("task_id", "?")
        if event["event"] == "start":
            self.tasks_run += 1
            self.console.print(f"  · {task} …", highlight=False)
            return
        took = f" ({event['seconds']:.1f}s)" if event.get("seconds") is not None else ""
        if event["event"] == "success":
            summary = f"  {event['summary']}" if event.get("summary") else ""
            self.console.print(f"  [green]✓[/green] {task}{took}{summary}", highlight=False)
        else:
            self.failures.append(event)
            self.console.print(f"  [red]✗[/red] {task}{took}", highlight=False)

    def listen(self) -> tuple[int, threading.Thread]:
        """A pipe whose write end the tasks report to (SEGFLOW_PROGRESS_FD) and the thread reading it."""
        read_fd, write_fd = os.pipe()

        def pump() -> None:
            with os.fdopen(read_fd, "r", errors="replace") as lines:
                for line in lines:
                    with contextlib.suppress(ValueError, KeyError):
                        self(json.loads(line))

        thread = threading.Thread(target=pump, name="segflow-progress", daemon=True)
        thread.start()
        return write_fd, thread


def run_dag(
    dag_id: str, as_of: date, log_file: Path, full_refresh: bool = False, progress: ProgressPrinter | None = None
) -> tuple[str, list[str]]:
    """Run one DAG for `as_of` with Airflow's DAG test runner (same task code as a scheduled run).
    Returns the run state and the failed task ids; Airflow's own log goes to `log_file`; task events go to
    `progress` as they happen."""
    from airflow.dag_processing.dagbag import DagBag

    from segflow.airflow.progress import PROGRESS_FD_ENV
    from segflow.core.dbt import release_dbt_duckdb
    from segflow.core.resources import DAGS_FOLDER

    logical_date = datetime.combine(as_of + timedelta(days=1), dtime(), tzinfo=UTC)
    write_fd, reader = progress.listen() if progress else (None, None)
    if write_fd is not None:
        os.environ[PROGRESS_FD_ENV] = str(write_fd)
    try:
        with redirect_output(log_file):
            bag = DagBag(dag_folder=str(DAGS_FOLDER / f"{dag_id}.py"))
            if bag.import_errors:
                raise RuntimeError(f"DAG import errors: {bag.import_errors}")
            conf = {"as_of": as_of.isoformat(), **({"full_refresh": True} if full_refresh else {})}
            run = bag.get_dag(dag_id).test(logical_date=logical_date, run_conf=conf)
    finally:
        # After a failed dbt task as well: the next DAG of this process needs the warehouse file.
        release_dbt_duckdb()
        os.environ.pop(PROGRESS_FD_ENV, None)
        if write_fd is not None:
            os.close(write_fd)
            reader.join(timeout=5)
    failed = [ti.task_id for ti in run.get_task_instances() if ti.state in ("failed", "upstream_failed")]
    return str(run.state), failed


def cmd_run(args) -> int:
    os.environ.setdefault("SEGFLOW_TASK_RETRIES", "0")
    # Library chatter belongs in the Airflow log file, not on the console.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    sys.stdout.flush()
    # A copy of the terminal's descriptor: task progress is printed while fd 1 goes to the Airflow log.
    console = _console(os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1))
    started = time.time()
    with console.status("preparing Airflow (metadata DB, pool)"):
        settings = _prepare_airflow(args.config)
    from segflow.airflow.callables import resolve_as_of
    from segflow.ml.registry import has_champions

    as_of = resolve_as_of(args.as_of)  # the same rule the DAGs use (explicit date, else yesterday in UTC)
    from segflow.airflow.dag_defaults import START_DATE

    if as_of < START_DATE.date():
        console.print(
            f"error: as-of {as_of} lies before the DAGs' start date {START_DATE.date()}: nothing can run for it",
            markup=False,
            highlight=False,
        )
        return 2
    log_file = Path(os.environ["AIRFLOW_HOME"]) / "logs" / f"segflow-run-{as_of}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    console.print(
        f"segflow run as of [bold]{as_of}[/bold] (config: {settings.config_file or 'defaults'}; Airflow log: {log_file})"
    )
    plan = ["segflow_build"]
    # auto: train unless every model has a champion trained on data up to the as-of date (a backfill trains its own).
    if args.retrain == "always" or (args.retrain == "auto" and not has_champions(settings, as_of)):
        plan.append("segflow_train")
    plan.append("segflow_score")
    for dag_id in plan:
        step = time.time()
        console.print(f"→ {dag_id}")
        progress = ProgressPrinter(console)
        state, failed = run_dag(
            dag_id, as_of, log_file, full_refresh=args.full_refresh and dag_id == "segflow_build", progress=progress
        )
        if state == "success" and progress.tasks_run == 0:
            # Airflow marks a run successful when none of its tasks was scheduled: that is not a success.
            console.print(
                f"error: {dag_id} ran no task for as-of {as_of}; see {log_file}", markup=False, highlight=False
            )
            return 1
        if state != "success":
            reason = _failure_reason(log_file, progress)
            detail = next((e["error"] for e in progress.failures if e.get("error")), "")
            if "\n" in detail.strip():  # e.g. every failed expectation of a gate, one per line
                console.print("\n".join(detail.strip().splitlines()[:20]), markup=False, highlight=False)
            console.print(
                f"[red]✗ {dag_id} {state}[/red] after {time.time() - step:.0f}s; failed tasks: "
                f"{', '.join(failed) or '-'}; full log: {log_file}",
                highlight=False,
            )
            first = next((e["task_id"] for e in progress.failures), failed[0] if failed else "an unknown task")
            console.print(
                f"error: {dag_id} failed at {first}: {reason}",
                markup=False,
                highlight=False,
            )
            return 1
        console.print(f"[green]✓[/green] {dag_id} ({time.time() - step:.0f}s)")
    from segflow.local.summary import print_summary

    print_summary(settings, console)
    console.print(f"done in {time.time() - started:.0f}s")
    return 0


def _failure_reason(log_file: Path, progress: ProgressPrinter) -> str:
    """One line: the exception that failed the run (its message names file/suite/expectation), from the task's
    failure report, else the last exception in the log."""
    for event in progress.failures:
        if event.get("error"):
            return " ".join(event["error"].split())[:400]
    lines = log_file.read_text(errors="replace").splitlines() if log_file.exists() else []
    pattern = re.compile(r"^([\w.]+(Error|Exception)): ")
    hits = [line for line in lines if pattern.match(line)]
    return hits[-1][:400] if hits else "see the log"


def cmd_summary(args) -> int:
    from segflow.local.summary import print_summary

    print_summary(load_settings(args.config), _console())
    return 0


def cmd_env(args) -> int:
    from segflow.airflow.environment import airflow_environ

    for key, value in airflow_environ(load_settings(args.config)).items():
        print(f"export {key}='{value}'")
    return 0


def cmd_ui(args) -> int:
    from segflow.local import services

    settings = load_settings(args.config)
    if args.action == "stop":
        stopped = services.stop(settings)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing started by `segflow ui` is running")
        return 0
    if args.action == "status":
        records = services.running(settings)
        for record in records:
            print(f"{record['name']:22s} pid {record['pid']}")
        return 0 if records else 1
    site = Path(settings.get("ui", "docs_dir"))
    if args.docs or not (site / "index.html").exists():
        from segflow.local.docs import build_docs

        print("building the dbt docs and GX Data Docs sites …")
        build_docs(settings=settings)
    else:
        from segflow.local.docs import link_data_docs

        link_data_docs(settings)
    names = [s.name for s in services.services(settings, services.service_environ(settings))]
    workers = sum(name.startswith("airflow-celery-worker") for name in names)
    print(
        "starting Airflow (api-server, scheduler, dag-processor, triggerer"
        + (f", {workers} Celery workers" if workers else "")
        + ")"
        + (", MLflow" if "mlflow" in names else "")
        + ", the docs server, the segment API"
        + (" and the stream consumer" if "stream-consumer" in names else "")
        + " …"
    )
    try:
        services.start(settings)
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    links = services.urls(settings)
    user, password = services.airflow_login(settings)
    print(f"Airflow        {links['airflow']}   login: {user} / {password}")
    print(f"MLflow         {links['mlflow']}")
    print(f"dbt docs       {links['dbt_docs']}")
    print(f"GX Data Docs   {links['gx_data_docs']}")
    print(f"Segment API    {links['segment_api']}docs   key: {services.demo_api_key(settings)}")
    print(
        f"  curl -H 'Authorization: Bearer <key>' {links['segment_api']}v1/segments"
        + (
            ""
            if (Path(settings.get("serving", "snapshot_dir")) / "CURRENT").exists() or settings.get("serving", "url")
            else "   (answers once a scoring run has synced it: make demo)"
        )
    )
    stream = settings.raw["stream"]
    if stream.get("url"):
        print(
            f"Triggers       segflow stream on {redact_url(stream['url'])}: events to {stream['key_prefix']}:events, "
            f"transitions on {stream['key_prefix']}:triggers (see one fire: segflow stream replay --day <day> --now --speed 60)"
        )
    else:
        print(
            "Triggers       off: set stream.url (a Redis, e.g. SEGFLOW__STREAM__URL=redis://127.0.0.1:6379/2) for real-time triggers"
        )
    print(f"logs: {Path(settings.get('ui', 'state_dir')) / 'logs'}; stop with `make ui-stop` (segflow ui stop)")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from segflow.serving.api import create_app

    settings = load_settings(args.config)
    host = args.host or settings.get("serving", "host")
    port = args.port or settings.get("serving", "port")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    store = settings.get("serving", "url") or settings.get("serving", "snapshot_dir")
    print(f"segment API on http://{host}:{port} (OpenAPI: /openapi.json, docs: /docs; store: {redact_url(store)})")
    # uvicorn's access log would print looked-up ids in clear: the API logs requests itself (serving.log_ids).
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_level="warning")
    return 0


def cmd_api_key(args) -> int:
    from segflow.serving import keys

    settings = load_settings(args.config)
    path = Path(settings.get("serving", "keys_file"))
    if args.action == "create":
        try:
            key, record = keys.create_key(path, args.scope or keys.SCOPES, args.name, args.rate_limit)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(key)
        print(
            f"key id {record.key_id}, scopes {' '.join(sorted(record.scopes))}: shown once, stored only hashed",
            file=sys.stderr,
        )
        return 0
    if args.action == "revoke":
        if not args.key_id:
            print("error: revoke needs the key id (segflow api-key list)", file=sys.stderr)
            return 2
        if keys.revoke_key(path, args.key_id):
            print(f"revoked {args.key_id}")
            return 0
        print(f"error: no active key {args.key_id}", file=sys.stderr)
        return 1
    for record in keys.list_keys(path):
        state = f"revoked {record.revoked_at[:19]}" if record.revoked_at else "active"
        limit = record.rate_limit_per_minute or "default"
        print(f"{record.key_id}  {' '.join(sorted(record.scopes)):28s} {limit!s:>8} /min  {state:28s} {record.name}")
    return 0


def cmd_serving(args) -> int:
    from segflow.serving.snapshot import NothingPublished
    from segflow.serving.sync import sync

    try:
        result = sync(load_settings(args.config))
    except NothingPublished as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"serving version {result['version']} (as of {result['as_of']}): {result['profiles']:,} profiles, "
        f"{result['segments']} segments"
        + (f", loaded into {result['redis_url']}" if "redis" in result else "")
        + f" in {result['seconds']}s"
    )
    return 0


def cmd_stream(args) -> int:
    """segflow stream [run|replay|reconcile|status]: the real-time trigger consumer and its tools."""
    import json as _json
    import signal
    from datetime import date as _date

    from segflow.realtime.consumer import StreamConsumer, StreamKeys, redis_client
    from segflow.realtime.engine import iso
    from segflow.realtime.replay import day_events, group_lag, reconcile, replay
    from segflow.realtime.rules import RuleError

    settings = load_settings(args.config)
    cfg = settings.raw["stream"]
    if not cfg.get("url"):
        print("error: stream.url is not set (e.g. SEGFLOW__STREAM__URL=redis://127.0.0.1:6379/0)", file=sys.stderr)
        return 2
    client = redis_client(cfg["url"])
    keys = StreamKeys(cfg["key_prefix"])
    action = args.action or "run"
    if action == "run":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        try:
            consumer = StreamConsumer(settings, client=client)
        except RuleError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        stop = {"now": False}

        def request_stop(*_):
            stop["now"] = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        print(
            f"segflow stream: group {cfg['group']} on {redact_url(cfg['url'])} {keys.events} -> {keys.output} "
            f"(dead letters: {keys.dead}; allowed lateness {cfg['allowed_lateness_seconds']:g} s, clock {cfg['clock']})",
            flush=True,
        )
        consumer.run(lambda: stop["now"])
        print(f"stopped: {consumer.counters.as_dict()}")
        return 0
    if action == "replay":
        if not args.day:
            print("error: replay needs --day YYYY-MM-DD", file=sys.stderr)
            return 2
        events = args.events_dir or ((settings.raw.get("sources") or {}).get("events") or {}).get("path")
        if not events:
            print("error: no events folder (--events-dir, or a files source named events)", file=sys.stderr)
            return 2
        rows = day_events(Path(events), _date.fromisoformat(args.day))
        sent = replay(client, keys, rows, speed=args.speed, restamp=args.now, group=cfg["group"])
        print(
            f"published {sent:,} events of {args.day} to {keys.events}" + (" (re-stamped to now)" if args.now else "")
        )
        return 0
    if action == "reconcile":
        if not args.day:
            print("error: reconcile needs --day YYYY-MM-DD", file=sys.stderr)
            return 2
        result = reconcile(settings, client, keys, _date.fromisoformat(args.day))
        print(_json.dumps(result, indent=2, default=str))
        return 0 if not result["only_batch"] and not result["only_stream"] else 1
    saved = client.hgetall(keys.clock)
    print(
        _json.dumps(
            {
                "input_lag": group_lag(client, keys, cfg["group"]),
                "watermark": iso(int(saved["watermark"])) if saved.get("watermark") else None,
                "output_entries": client.xlen(keys.output),
                "dead_letters": client.xlen(keys.dead),
                "users_with_timers": client.zcard(keys.timers),
            },
            indent=2,
        )
    )
    return 0


def cmd_config(args) -> int:
    from segflow.core.config import schema_reference

    if args.action == "reference":
        print(schema_reference())
        return 0
    settings = load_settings(args.config)
    if args.action == "show":
        import yaml

        def redacted(node):  # passwords in URLs (often expanded from ${ENV}) are not printed
            if isinstance(node, dict):
                return {key: redacted(value) for key, value in node.items()}
            return redact_url(node) if isinstance(node, str) and "://" in node else node

        print(yaml.safe_dump(redacted(settings.raw), sort_keys=False), end="")
        return 0
    print(f"configuration OK: {settings.config_file or 'defaults (no segflow.yml found)'}")
    return 0


def cmd_datasets(args) -> int:
    from segflow.local import datasets

    if args.action == "list":
        for spec in datasets.DATASETS.values():
            print(f"{spec.name:16s} {spec.title} ({spec.licence}) - {spec.page}")
        return 0
    if args.name not in datasets.DATASETS:
        print(f"error: unknown dataset {args.name!r}; known: {', '.join(datasets.DATASETS)}", file=sys.stderr)
        return 2
    settings = load_settings(args.config)
    folder = Path(args.dir) if args.dir else datasets.default_folder(settings, args.name)
    try:
        result = datasets.fetch(
            args.name,
            folder,
            source=args.source,
            url=args.url,
            force=args.force,
            progress=lambda line: print(line, flush=True),
        )
    except datasets.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{result.path} ({result.rows:,} rows); set SEGFLOW_ONLINE_RETAIL_PATH={result.path} or keep it where the "
        f"example configuration looks"
        if args.name == "online-retail"
        else str(result.path)
    )
    return 0


def cmd_erase(args) -> int:
    from segflow.privacy.erasure import request_erasure

    settings = load_settings(args.config)
    request_id = request_erasure(settings, contact_id=args.contact_id, email=args.email)
    print(
        f"erasure request {request_id} recorded: the next run (segflow run, or the daily segflow_build) forgets "
        "this person everywhere; raw.erasure_log keeps only salted hashes as the record"
    )
    return 0


def cmd_backtest(args) -> int:
    """Backtest the published scores at several dates, each on fresh stores (segflow.ml.backtest)."""
    from segflow.ml.backtest import format_report, log_to_mlflow, run_backtest

    settings = load_settings(args.config)
    if settings.config_file is None:
        print("error: segflow backtest needs a configuration file (--config or $SEGFLOW_CONFIG)", file=sys.stderr)
        return 2
    try:
        dates = sorted({date.fromisoformat(d.strip()) for d in args.as_of.split(",") if d.strip()})
    except ValueError as exc:
        print(f"error: --as-of takes dates YYYY-MM-DD separated by commas: {exc}", file=sys.stderr)
        return 2
    if not dates:
        print("error: --as-of names no date", file=sys.stderr)
        return 2
    horizon = args.horizon or settings.horizon_days
    print(f"backtest of {settings.config_file}: {', '.join(map(str, dates))} (horizon {horizon} days)", flush=True)

    def progress(result) -> None:
        segflow, best = (
            result.churn["segflow"]["roc_auc"],
            max(v["roc_auc"] for k, v in result.churn.items() if k != "segflow"),
        )
        print(
            f"  {result.as_of}: {result.customers:,} customers, churn rate {result.churn_rate:.1%}; churn ROC-AUC "
            f"{segflow:.4f} (best baseline {best:.4f}); {result.seconds:.0f}s",
            flush=True,
        )

    try:
        report = run_backtest(
            Path(settings.config_file),
            dates,
            horizon,
            Path(args.work_dir) if args.work_dir else None,
            keep=args.keep,
            on_date=progress,
        )
    except (RuntimeError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(format_report(report)))
    out = Path(args.json) if args.json else None
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {out}")
    if not args.no_mlflow:
        print(
            f"MLflow: run {log_to_mlflow(settings, report)} in experiment '{settings.get('mlflow', 'experiment', default='segflow')} backtests'"
        )
    return 0


def cmd_bench(args) -> int:
    from segflow.bench.harness import StageFailed, load_results, run_size, write_result
    from segflow.bench.report import write_report

    results_dir, report = Path(args.results_dir), Path(args.report)
    sizes = [] if args.report_only else [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    started = time.time()
    for users in sizes:
        print(f"benchmark: {users:,} users ({args.days} days of data)", flush=True)
        try:
            result = run_size(
                users,
                Path(args.cache_dir),
                Path(args.work_dir),
                days=args.days,
                airflow=not args.skip_airflow,
                progress=lambda line: print(line, flush=True),
            )
        except StageFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"  results: {write_result(result, results_dir)}", flush=True)
    write_report(load_results(results_dir), report, Path(args.notes))
    print(f"report: {report} ({time.time() - started:.0f}s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    config_help = "segflow.yml to use (default: $SEGFLOW_CONFIG, ./segflow.yml)"
    parser = argparse.ArgumentParser(
        prog="segflow", description="User segmentation pipeline (Airflow + dbt + GX + MLflow)."
    )
    parser.add_argument("--version", action="version", version=f"segflow {version()}")
    parser.add_argument("--config", default=None, help=config_help)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of configuration errors")
    # --config is accepted after the subcommand too (`segflow run --config F`); SUPPRESS keeps the global value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate", parents=[common], help="generate synthetic CRM, analytics and transaction extracts"
    )
    gen.add_argument("--users", type=int, default=10_000)
    gen.add_argument("--days", type=int, default=180)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--dirty-rate", type=float, default=0.0, help="share of rows with injected defects (0-0.5)")
    gen.add_argument("--out", default=str(REPO_ROOT / "data" / "generated"))
    gen.add_argument("--end-date", default=None, help="last generated day (YYYY-MM-DD; default 2026-09-30)")
    gen.add_argument("--horizon-days", type=int, default=None, help="churn horizon of the ground truth (default 90)")
    gen.add_argument("--event-scale", type=float, default=None, help="multiply browsing activity (default 1)")
    gen.add_argument("--purchase-scale", type=float, default=None, help="scale the purchase hazard (default 1)")
    gen.add_argument("--crm-url", default=None, help="SQLAlchemy URL for the CRM (default: OUT/crm.sqlite)")
    gen.set_defaults(func=cmd_generate)

    run = sub.add_parser("run", parents=[common], help="run the pipeline DAGs for one date through Airflow")
    run.add_argument("--as-of", default=None, help="date to compute everything as of (default: yesterday)")
    run.add_argument(
        "--full-refresh",
        action="store_true",
        help="reload every source file up to the date and rebuild dbt's incremental event models",
    )
    run.add_argument(
        "--retrain",
        choices=["auto", "always", "never"],
        default="auto",
        help="auto: train only when no champion trained on data up to the as-of date exists yet",
    )
    run.set_defaults(func=cmd_run)

    sub.add_parser("summary", parents=[common], help="print segments, personas and churn-risk bands").set_defaults(
        func=cmd_summary
    )
    sub.add_parser("init", parents=[common], help="prepare the Airflow metadata DB and pool").set_defaults(
        func=cmd_init
    )
    ui = sub.add_parser(
        "ui",
        parents=[common],
        help="start/stop the local Airflow, MLflow and docs UIs and the segment API (make ui / make ui-stop)",
    )
    ui.add_argument("action", choices=["start", "stop", "status"])
    ui.add_argument("--docs", action="store_true", help="rebuild the dbt docs and GX Data Docs sites before starting")
    ui.set_defaults(func=cmd_ui)
    bench = sub.add_parser(
        "bench", parents=[common], help="benchmark every stage at several sizes (make bench; BENCHMARKS.md)"
    )
    bench.add_argument("--sizes", default="10000,100000,1000000", help="users per dataset, comma-separated")
    bench.add_argument("--days", type=int, default=366, help="days of data (the last one is the incremental run's)")
    bench.add_argument("--cache-dir", default=str(REPO_ROOT / "bench" / "cache"), help="generated datasets, reused")
    bench.add_argument(
        "--work-dir", default=str(REPO_ROOT / "bench" / "work"), help="warehouses, logs (replaced per size)"
    )
    bench.add_argument("--results-dir", default=str(REPO_ROOT / "bench" / "results"))
    bench.add_argument("--report", default=str(REPO_ROOT / "BENCHMARKS.md"))
    bench.add_argument("--notes", default=str(REPO_ROOT / "bench" / "NOTES.md"), help="text appended to the report")
    bench.add_argument("--skip-airflow", action="store_true", help="leave out the whole pipeline through Airflow")
    bench.add_argument("--report-only", action="store_true", help="only re-render the report from the results files")
    bench.set_defaults(func=cmd_bench)
    sub.add_parser("env", parents=[common], help="print the environment (export lines) Airflow runs with").set_defaults(
        func=cmd_env
    )
    backtest = sub.add_parser(
        "backtest",
        parents=[common],
        help="run the pipeline as of past dates on fresh stores and score what it published against what happened",
    )
    backtest.add_argument("--as-of", required=True, help="dates YYYY-MM-DD separated by commas")
    backtest.add_argument(
        "--horizon", type=int, default=None, help="days of outcomes after each date (churn.horizon_days)"
    )
    backtest.add_argument("--work-dir", default=None, help="where each date's stores go (default: a temporary folder)")
    backtest.add_argument("--keep", action="store_true", help="keep each date's stores for inspection")
    backtest.add_argument("--json", default=None, help="also write the report as JSON to this file")
    backtest.add_argument("--no-mlflow", action="store_true", help="do not log the report to the configured MLflow")
    backtest.set_defaults(func=cmd_backtest)
    erase = sub.add_parser("erase", parents=[common], help="ask for a person to be forgotten (GDPR art. 17 / CCPA)")
    who = erase.add_mutually_exclusive_group(required=True)
    who.add_argument("--contact-id", default=None, help="the CRM contact id")
    who.add_argument("--email", default=None, help="the email address (every contact holding it)")
    erase.set_defaults(func=cmd_erase)
    serve = sub.add_parser("serve", parents=[common], help="start the segment API (profiles and segments over HTTP)")
    serve.add_argument("--host", default=None, help="interface (default: serving.host)")
    serve.add_argument("--port", type=int, default=None, help="port (default: serving.port)")
    serve.set_defaults(func=cmd_serve)
    api_key = sub.add_parser("api-key", parents=[common], help="create, list or revoke segment API keys")
    api_key.add_argument("action", choices=["create", "list", "revoke"])
    api_key.add_argument("key_id", nargs="?", help="the key id to revoke")
    api_key.add_argument(
        "--scope", action="append", choices=["read:profiles", "read:segments"], help="repeatable (default: both)"
    )
    api_key.add_argument("--name", default="", help="who or what the key is for")
    api_key.add_argument("--rate-limit", type=int, default=None, help="requests a minute (default: serving's)")
    api_key.set_defaults(func=cmd_api_key)
    serving = sub.add_parser("serving", parents=[common], help="sync the serving store from the published marts")
    serving.add_argument("action", choices=["sync"])
    serving.set_defaults(func=cmd_serving)
    stream = sub.add_parser(
        "stream", parents=[common], help="real-time triggers: run the stream consumer, replay a day, reconcile, status"
    )
    stream.add_argument("action", nargs="?", choices=["run", "replay", "reconcile", "status"], default="run")
    stream.add_argument("--day", default=None, help="replay/reconcile: the day (YYYY-MM-DD)")
    stream.add_argument("--events-dir", default=None, help="replay: the folder of YYYY-MM-DD.jsonl files")
    stream.add_argument(
        "--speed", type=float, default=None, help="replay: event-time seconds per second (default: as fast as taken)"
    )
    stream.add_argument("--now", action="store_true", help="replay: re-stamp the events so the first happens now")
    stream.set_defaults(func=cmd_stream)
    config = sub.add_parser(
        "config", parents=[common], help="check the configuration, show it resolved, or list every key"
    )
    config.add_argument("action", choices=["check", "show", "reference"])
    config.set_defaults(func=cmd_config)
    datasets = sub.add_parser("datasets", parents=[common], help="public example datasets (fetch, verify, convert)")
    datasets.add_argument("action", choices=["fetch", "list"])
    datasets.add_argument("name", nargs="?", help="dataset to fetch (segflow datasets list)")
    datasets.add_argument(
        "--from",
        dest="source",
        default=None,
        help="a local copy of the published archive (or workbook) instead of downloading it",
    )
    datasets.add_argument("--url", default=None, help="download from this address instead of the publisher's")
    datasets.add_argument("--dir", default=None, help="data folder (default: <root>/data/<dataset>)")
    datasets.add_argument("--force", action="store_true", help="fetch again even if the converted file exists")
    datasets.set_defaults(func=cmd_datasets)
    return parser


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("segflow")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run a command. A configuration problem is one line on stderr and exit status 2 (the traceback only
    with --debug); other failures print their own message and exit 1."""
    from segflow.core.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"segflow: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
