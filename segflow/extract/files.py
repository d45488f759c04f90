"""File-drop sources: CSV / JSON lines / Parquet files, optionally gzipped, in date-partitioned folders.

A file whose path (relative to the source folder) contains a date YYYY-MM-DD belongs to that day's
partition: `2026-03-01.csv`, `dt=2026-03-01/part-0.jsonl.gz`. A run for as-of D
- always reloads the files of day D (its data interval) and forgets files of D that disappeared, so re-running
  a day replaces it;
- loads any file dated before D that is new or changed since it was loaded (late files, corrections), so a
  backfill or rerun of that date picks them up; files dated after D are not read (not known yet);
- loads undated files (snapshot exports such as one Parquet file of all orders) when new or changed; their
  rows become known at their own timestamps in dbt.
Re-loading a file replaces its rows: reruns never duplicate. Each file loads in its own transaction (with its
loaded_files record): a refused file loads nothing, files loaded before it stay loaded and are skipped by the
rerun. One transaction for a whole source held every file's rows and temp tables in memory until the commit
(13 GB and growing for a full refresh of 365 daily files at 1M users; see BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import queue
import re
import threading
from datetime import date
from pathlib import Path

from segflow.core.warehouse import transaction
from segflow.extract.errors import ExtractError
from segflow.extract.loader import BatchResult, LoadContext, load_batch
from segflow.extract.mapping import Mapping
from segflow.extract.readers import read_file, read_records
from segflow.extract.spec import SourceSpec

FILE_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")
DEFAULT_PATTERNS = {
    "events": ["*.jsonl", "*.jsonl.gz"],
    "transactions": ["*.csv", "*.csv.gz"],
    "contacts": ["*.csv", "*.csv.gz"],
    "erasure_requests": ["*.csv", "*.csv.gz", "*.jsonl"],
}


def file_date(relative: Path) -> date | None:
    for match in FILE_DATE.finditer(str(relative)):
        try:
            return date.fromisoformat(match.group(1))
        except ValueError:
            continue
    return None


def list_files(spec: SourceSpec) -> tuple[Path, list[tuple[Path, str, date | None]]]:
    """(base folder, [(path, partition name relative to the base, file date or None)]) sorted by name."""
    path = Path(spec.options["path"])
    if path.is_file():
        return path.parent, [(path, path.name, file_date(Path(path.name)))]
    if not path.is_dir():
        raise ExtractError(f"source {spec.name}: {path} does not exist")
    patterns = spec.get("pattern", DEFAULT_PATTERNS[spec.dataset.name])
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    found = {p for pattern in patterns for p in path.rglob(pattern) if p.is_file()}
    files = []
    for p in sorted(found):
        relative = p.relative_to(path)
        files.append((p, str(relative), file_date(relative)))
    return path, files


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes: a file rewritten with the same size and modification time is still new."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def outside(path: Path, base: Path) -> bool:
    """Whether `path` (a symbolic link, or below one) leads out of the source folder."""
    try:
        return not path.resolve(strict=True).is_relative_to(base.resolve())
    except OSError:  # a dangling or looping link
        return True


def extract_files(
    con, spec: SourceSpec, ctx: LoadContext, force: bool = False, workers: int | None = None
) -> list[BatchResult]:
    base, files = list_files(spec)
    known = {
        r[0]: (r[1], r[2], r[3])
        for r in con.execute(
            "SELECT source_file, content_sha256, NULL, file_date FROM raw.loaded_files WHERE source = ?", [spec.name]
        ).fetchall()
    }
    results: list[BatchResult] = []
    present = {partition for _, partition, _ in files}
    # The run's own interval is replaced as a whole: a file of day D that was removed takes its rows along.
    for partition, (_, _, day) in known.items():
        if day == ctx.as_of and partition not in present:
            with transaction(con):
                con.execute(
                    f"DELETE FROM raw.{spec.dataset.raw_table} WHERE _source = ? AND _source_file = ?",
                    [spec.name, partition],
                )
                con.execute("DELETE FROM raw.quarantine WHERE source = ? AND source_file = ?", [spec.name, partition])
                con.execute("DELETE FROM raw.loaded_files WHERE source = ? AND source_file = ?", [spec.name, partition])
            results.append(BatchResult(partition, 0, 0, 0, 0, ["file removed: its rows were deleted"]))
    todo = []
    refused: list[ExtractError] = []
    for path, partition, day in files:
        if day is not None and day > ctx.as_of:
            continue
        if outside(path, base):
            # Never read (nor echo) what a link points at outside the folder the source was given.
            refused.append(
                ExtractError(
                    f"source {spec.name}: {partition}: a symbolic link leading outside the source folder; not followed"
                )
            )
            continue
        stat = path.stat()
        digest = content_hash(path)
        unchanged = known.get(partition, (None, None, None))[0] == digest
        if unchanged and not force and day != ctx.as_of:
            continue
        todo.append((path, partition, day, stat, digest))
    workers = max(1, min(workers or LOAD_WORKERS, len(todo)))
    if workers == 1:
        loaded_one = [_load_file(con, spec, ctx, *item) for item in todo]
        if refused:
            raise refused[0]
        return results + loaded_one
    # Many files (a first load, a full refresh): one connection per worker, files handed out in order. A file's
    # statements run on one core (a day's file is less than a DuckDB row group), so two files at once use both.
    # The first refused file (in file order) is raised once every started file has finished.
    cursors = [con.cursor() for _ in range(workers)]
    for cursor in cursors:
        cursor.execute("SET TimeZone = 'UTC'")
    pending: queue.SimpleQueue = queue.SimpleQueue()
    for index, item in enumerate(todo):
        pending.put((index, item))
    loaded: dict[int, BatchResult] = {}
    errors: dict[int, ExtractError] = {}

    def work(cursor) -> None:
        while not errors:
            try:
                index, item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                loaded[index] = _load_file(cursor, spec, ctx, *item)
            except ExtractError as exc:
                errors[index] = exc

    try:
        threads = [
            threading.Thread(target=work, args=(cursor,), name=f"extract-{spec.name}-{i}")
            for i, cursor in enumerate(cursors)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for cursor in cursors:
            cursor.close()
    if errors:
        raise errors[min(errors)]
    if refused:
        raise refused[0]
    return results + [loaded[i] for i in sorted(loaded)]


LOAD_WORKERS = 2  # files loaded at once (the machines here have 2 cores)


def _load_file(
    con, spec: SourceSpec, ctx: LoadContext, path: Path, partition: str, day: date | None, stat, digest: str
) -> BatchResult:
    """Load one file in its own transaction, with its loaded_files record."""
    with transaction(con):
        if stat.st_size == 0 and spec.get("allow_empty", False):
            # An allowed empty file still replaces its partition (by nothing) and is audited with zero rows.
            batch = read_records(con, [], str(path), empty_columns=spec.dataset.names)
            batch.notes.append("empty file (allowed)")
            plan = Mapping().plan(spec.dataset, batch.columns, str(path))
        else:
            batch = read_file(con, path, spec.get("format"), spec.get("encoding", "utf-8"), spec.get("delimiter"))
            plan = spec.mapping.plan(spec.dataset, batch.columns, str(path))
        result = load_batch(con, ctx, spec.name, spec.dataset, plan, batch, partition, day)
        con.execute("DELETE FROM raw.loaded_files WHERE source = ? AND source_file = ?", [spec.name, partition])
        con.execute(
            "INSERT INTO raw.loaded_files (source, source_file, file_date, size_bytes, mtime_ns, loaded_at, "
            "content_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [spec.name, partition, day, stat.st_size, stat.st_mtime_ns, ctx.now, digest],
        )
    return result
