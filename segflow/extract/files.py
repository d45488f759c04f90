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
from segflow.extract.loader import BatchResult, LoadContext, Part, load_parts
from segflow.extract.mapping import Mapping
from segflow.extract.readers import Batch, read_file, read_records
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
    groups = file_groups(todo, workers)
    if workers == 1:
        loaded_one: list[BatchResult] = []
        for group in groups:
            group_results, error = _load_group(con, spec, ctx, group)
            loaded_one += group_results
            if error is not None:
                raise error
        if refused:
            raise refused[0]
        return results + loaded_one
    # Many files (a first load, a full refresh): one connection per worker, groups handed out in order. A group's
    # statements mostly run on one core, so two groups at once use both.
    # The first refused file (in file order) is raised once every started group has finished.
    cursors = [con.cursor() for _ in range(workers)]
    for cursor in cursors:
        cursor.execute("SET TimeZone = 'UTC'")
    pending: queue.SimpleQueue = queue.SimpleQueue()
    for index, group in enumerate(groups):
        pending.put((index, group))
    loaded: dict[int, list[BatchResult]] = {}
    errors: dict[tuple[int, int], ExtractError] = {}  # by (group, file within it): the first in file order wins
    failures: list[BaseException] = []

    def work(cursor) -> None:
        while not errors and not failures:
            try:
                index, group = pending.get_nowait()
            except queue.Empty:
                return
            try:
                loaded[index], error = _load_group(cursor, spec, ctx, group)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread, not lost with this one
                failures.append(exc)
                return
            if error is not None:
                errors[(index, len(loaded[index]))] = error

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
    if failures:
        raise failures[0]
    if errors:
        raise errors[min(errors)]
    if refused:
        raise refused[0]
    return results + [r for i in sorted(loaded) for r in loaded[i]]


LOAD_WORKERS = 2  # groups loaded at once (the machines here have 2 cores)
GROUP_BYTES = 32 << 20  # text loaded in one transaction: bounds the memory of a group
GROUP_FILES = 64
GROUPS_PER_WORKER = 4  # so that no worker is left with a long last group while the other core idles


def file_groups(todo: list[tuple], workers: int = 1) -> list[list[tuple]]:
    """`todo` ((path, partition, day, stat, digest) in file order) cut into consecutive groups.

    A group holds at most GROUP_FILES files and, past its first file, at most GROUP_BYTES of text (gzipped files
    counted at 8x their size), less when that leaves fewer than GROUPS_PER_WORKER groups per worker.

    Returns:
        The groups, in file order.
    """
    weights = [item[3].st_size * (8 if item[0].name.lower().endswith((".gz", ".gzip")) else 1) for item in todo]
    budget = max(1, min(GROUP_BYTES, sum(weights) // (workers * GROUPS_PER_WORKER)))
    groups: list[list[tuple]] = []
    size = 0
    for item, weight in zip(todo, weights, strict=True):
        if not groups or len(groups[-1]) >= GROUP_FILES or size + weight > budget:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += weight
    return groups


def _read(con, spec: SourceSpec, path: Path, stat) -> tuple[Batch, bool]:
    """Read one file into temp table batch_source; (its batch, whether it is an allowed empty file)."""
    if stat.st_size == 0 and spec.get("allow_empty", False):
        # An allowed empty file still replaces its partition (by nothing) and is audited with zero rows.
        batch = read_records(con, [], str(path), empty_columns=spec.dataset.names)
        batch.notes.append("empty file (allowed)")
        return batch, True
    return read_file(con, path, spec.get("format"), spec.get("encoding", "utf-8"), spec.get("delimiter")), False


def _load_group(
    con, spec: SourceSpec, ctx: LoadContext, group: list[tuple]
) -> tuple[list[BatchResult], ExtractError | None]:
    """Read the files of `group` in order and load them, those sharing their columns in one transaction each.

    Returns:
        The loaded files' results and the refusal that stopped the group, if any: a file its reader or mapping
        refuses loads nothing, the files before it are loaded and the files after it are not read.
    """
    results: list[BatchResult] = []
    staged: list[tuple] = []  # (item, Part) of the files in temp table batch_group
    shape = None
    plan = None
    columns: list[str] = []
    for item in group:
        path, partition, day, stat, _ = item
        try:
            batch, empty = _read(con, spec, path, stat)
            mapping = Mapping() if empty else spec.mapping
            file_plan = mapping.plan(spec.dataset, batch.columns, str(path))
        except ExtractError as exc:
            con.execute("DROP TABLE IF EXISTS batch_source")
            results += _commit(con, spec, ctx, plan, columns, staged)
            return results, exc
        if staged and (tuple(batch.columns), empty) != shape:
            # Other columns (or the identity mapping of an empty file): the files before load first.
            con.execute("DROP TABLE IF EXISTS batch_next")  # left by a batch that failed on this connection
            con.execute("ALTER TABLE batch_source RENAME TO batch_next")
            results += _commit(con, spec, ctx, plan, columns, staged)
            con.execute("ALTER TABLE batch_next RENAME TO batch_source")
            staged = []
        if not staged:
            shape, plan, columns = (tuple(batch.columns), empty), file_plan, batch.columns
            con.execute("CREATE OR REPLACE TEMP TABLE batch_group AS SELECT 0 AS _part, * FROM batch_source")
        else:
            con.execute(f"INSERT INTO batch_group BY NAME SELECT {len(staged)} AS _part, * FROM batch_source")
        con.execute("DROP TABLE batch_source")
        staged.append((item, Part(partition, day, batch.rejects, batch.notes)))
    results += _commit(con, spec, ctx, plan, columns, staged)
    return results, None


def _commit(
    con, spec: SourceSpec, ctx: LoadContext, plan, columns: list[str], staged: list[tuple]
) -> list[BatchResult]:
    """Load the files staged in batch_group in one transaction, with their loaded_files records."""
    if not staged:
        return []
    with transaction(con):
        results = load_parts(
            con,
            ctx,
            spec.name,
            spec.dataset,
            plan,
            columns,
            [part for _, part in staged],
            view="batch_group",
            part_column="_part",
        )
        con.execute(
            "DELETE FROM raw.loaded_files WHERE source = ? AND source_file IN (SELECT unnest(?::VARCHAR[]))",
            [spec.name, [part.partition for _, part in staged]],
        )
        con.executemany(
            "INSERT INTO raw.loaded_files (source, source_file, file_date, size_bytes, mtime_ns, loaded_at, "
            "content_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                [spec.name, partition, day, stat.st_size, stat.st_mtime_ns, ctx.now, digest]
                for (_, partition, day, stat, digest), _ in staged
            ],
        )
    return results
