"""Keep the serving store in step with the published marts (the scoring DAG's last task; `segflow serving sync`)."""

from __future__ import annotations

import fcntl
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from segflow.core.config import Settings, redact_url
from segflow.core.engines import connect_engine, has_rows, scalar
from segflow.serving import snapshot
from segflow.serving.store import RedisStore

log = logging.getLogger(__name__)


def sync(settings: Settings) -> dict:
    """Build a new version from the warehouse's latest published scores and switch every store to it at once.

    The local snapshot is always written (it is the embedded store, and the source the Redis store loads from);
    with `serving.url` set, the version is then loaded into Redis and switched there. Replaced versions stay
    readable for `serving.grace_seconds`.

    Returns:
        version, as_of, counts and seconds, for the task's log and the CLI.
    """
    started = time.perf_counter()
    serving = settings.raw["serving"]
    snapshot_dir = Path(serving["snapshot_dir"])
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    store = RedisStore(serving["url"], serving["key_prefix"]) if serving.get("url") else None
    with open(snapshot_dir / ".sync.lock", "w") as lock:
        # One sync at a time (a scheduled one and `segflow serving sync`, a retried task and its zombie): two
        # interleaved would expire each other's versions. Airflow's pool serialises the DAG's own.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _sync(settings, serving, snapshot_dir, store, started)


def _sync(settings: Settings, serving: dict, snapshot_dir: Path, store: RedisStore | None, started: float) -> dict:
    read_at = datetime.now(UTC)
    with connect_engine(settings.warehouse_url) as engine:
        published = snapshot.read_published(engine)
        erased_at = _last_erasure(engine)
    # The oldest of the versions being replaced (local and Redis): what an erasure must have reached.
    # (Unknown - no version yet, or none in Redis - counts as older than any erasure: nothing is kept longer then.)
    builds = [_built_at(snapshot_dir), *([_parse(store.built_at())] if store else [])]
    previous_built = None if any(b is None for b in builds) else min(b for b in builds if b is not None)
    # An erasure applied since the replaced version was built outranks the grace period: that version still
    # holds the person, so it goes at once (a request in flight on it may get a 404 or 503, not their data).
    erasure = erased_at is not None and (previous_built is None or erased_at > previous_built)
    grace = 0 if erasure else serving["grace_seconds"]
    version = snapshot.new_version()
    written = snapshot.write_snapshot(
        published, snapshot_dir, version, source=redact_url(settings.warehouse_url), built_at=read_at
    )
    path = written["path"]
    snapshot.switch_to(snapshot_dir, version)
    removed = snapshot.expire_old(snapshot_dir, grace)
    result = {
        "version": version,
        "as_of": published["as_of"],
        "profiles": written["profiles"],
        "identifiers": written["identifiers"],
        "segments": written["segments"],
        "members": written["members"],
        "snapshot": str(path),
        "snapshots_removed": len(removed),
        "replaced_version_kept_seconds": grace,
    }
    if store is not None:
        result["redis"] = store.load(path, version, grace)
        result["redis_url"] = redact_url(serving["url"])
    result["seconds"] = round(time.perf_counter() - started, 2)
    log.info("serving store synced: %s", result)
    return result


def _last_erasure(engine) -> datetime | None:
    """When the last erasure request was applied (UTC), or None."""
    if not has_rows(
        engine,
        "SELECT 1 FROM information_schema.tables WHERE table_schema = 'raw' AND table_name = 'erasure_log'",
    ):
        return None
    value = scalar(engine, "SELECT max(applied_at) FROM raw.erasure_log")
    return value.replace(tzinfo=None) if isinstance(value, datetime) else None


def _built_at(snapshot_dir: Path) -> datetime | None:
    """When the current version was built (naive UTC), or None."""
    version = snapshot.current_version(snapshot_dir)
    path = snapshot.snapshot_file(snapshot_dir, version or "")
    if version is None or not path.exists():
        return None
    con = snapshot.open_snapshot(path)
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'built_at'").fetchone()
    finally:
        con.close()
    return _parse(row[0]) if row else None


def _parse(built_at: str | None) -> datetime | None:
    """A snapshot's built_at (ISO, UTC) as naive UTC, like the erasure log's times."""
    return datetime.fromisoformat(built_at).astimezone(UTC).replace(tzinfo=None) if built_at else None
