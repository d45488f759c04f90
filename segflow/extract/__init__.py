"""Extract: source systems -> typed `raw` tables in the DuckDB warehouse.

Rules that hold for every source (details per kind in files.py, sql.py, http.py; contract in docs/extracts.md):
- each source delivers one canonical dataset (contracts.py), its own columns mapped without code (mapping.py);
- every input row is either loaded to raw or written to `raw.quarantine` with file, line or key, column and
  reason; `raw.load_audit` records rows_in = rows_loaded + rows_quarantined per batch and run;
- each run loads its data interval; re-running it replaces it, so reruns never duplicate;
- structural problems (missing required column, unreadable, empty, truncated or wrongly encoded file,
  unreachable system) fail with the file or system named and load nothing of that batch (one transaction
  per file; per CRM window or API run);
- `raw.sources` lists the configured sources, so dbt knows which datasets exist (a transactions-only setup
  has no engagement features rather than invented zeros).
Quarantine covers rows that cannot be parsed; business rules (negative amounts, unknown currencies, future
timestamps) are judged later by the quality gates and flagged in dbt staging.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from segflow.core.config import Settings
from segflow.core.engines import DuckDBEngine, Engine, fetchone
from segflow.core.warehouse import connect, transaction
from segflow.extract.contracts import DATASETS
from segflow.extract.errors import ExtractError
from segflow.extract.loader import SALT_DDL, LoadContext, ensure_tables
from segflow.extract.spec import SourceSpec, source_specs

__all__ = ["ExtractError", "SourceResult", "run_extract", "source_specs", "DATASETS"]

log = logging.getLogger(__name__)


@dataclass
class SourceResult:
    source: str
    dataset: str
    kind: str
    files_loaded: int = 0  # batches: files, API days, CRM windows
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    new_rows: int = 0
    details: list[dict] = field(default_factory=list)


def _location(spec: SourceSpec) -> str:
    if spec.kind == "files":
        return str(spec.options["path"])
    if spec.get("conn_id"):
        return f"connection {spec.options['conn_id']}"
    from sqlalchemy.engine import make_url

    url = spec.options.get("url", "")
    try:
        return make_url(url).render_as_string(hide_password=True) if spec.kind == "sql" else url
    except Exception:  # noqa: BLE001 - whatever the parser's complaint, the URL (it may hold a secret) is not echoed
        return "(unparseable url)"


def _generated(spec: SourceSpec) -> bool:
    """Whether the source reads data written by `segflow generate` (its manifest.json lies beside it)."""
    import json

    if spec.kind == "files":
        path = Path(spec.options["path"])
        folders = [path.parent if path.is_file() else path]
    elif spec.kind == "sql" and str(spec.options.get("url", "")).startswith("sqlite:///"):
        folders = [Path(str(spec.options["url"])[len("sqlite:///") :]).parent]
    else:
        return False
    for folder in folders:
        for manifest in (folder / "manifest.json", folder.parent / "manifest.json"):
            try:
                if {"users", "days", "seed"} <= set(json.loads(manifest.read_text())):
                    return True
            except (OSError, ValueError, TypeError):
                continue
    return False


def resolve_salt(engine: Engine, specs: list[SourceSpec]) -> str:
    """The PII salt for this load (segflow.privacy.salt), checked against the one the warehouse was loaded with."""
    from segflow.privacy.salt import PrivacyError, pii_salt, salt_fingerprint

    try:
        salt, warning = pii_salt(generated_only=bool(specs) and all(_generated(s) for s in specs))
    except PrivacyError as exc:
        raise ExtractError(str(exc)) from None
    if warning:
        log.warning(warning)
    engine.execute(SALT_DDL)
    known = fetchone(engine, "SELECT fingerprint FROM raw.pii_salt")
    fingerprint = salt_fingerprint(salt)
    if known is None:
        engine.execute("INSERT INTO raw.pii_salt VALUES (?, ?)", [fingerprint, datetime.now(UTC).replace(tzinfo=None)])
    elif known[0] != fingerprint:
        raise ExtractError(
            "SEGFLOW_PII_SALT is not the salt this warehouse's hashes were made with: new rows would no longer match "
            "the people already loaded. Restore the salt, or load into a new warehouse."
        )
    return salt


def _extract_source(con, spec: SourceSpec, ctx: LoadContext, force: bool):
    if spec.kind == "files":
        from segflow.extract.files import extract_files

        return extract_files(con, spec, ctx, force=force)
    if spec.kind == "sql":
        from segflow.extract.sql import extract_sql

        return extract_sql(con, spec, ctx)
    from segflow.extract.http import extract_http

    return extract_http(con, spec, ctx)


def run_extract(
    settings: Settings, as_of: date, run_id: str, sources: tuple[str, ...] | None = None, force: bool = False
) -> dict[str, SourceResult]:
    """Load every configured source (or the named ones) as of `as_of`.

    force: reload every file dated up to as_of even if unchanged (a full refresh of the raw layer).
    A batch (file, CRM window, API days) that fails structurally is rolled back; the other sources still load, then one ExtractError names
    every failure so the task fails visibly.
    """
    specs = source_specs(settings)
    if settings.warehouse_engine == "duckdb":
        with connect(settings.warehouse_path) as con:
            ensure_tables(con)
            return _extract(con, specs, as_of, run_id, sources, force)
    # Another engine: the same extract on a DuckDB staging copy of what it reads, published in one transaction.
    from segflow.core.engines import connect_engine
    from segflow.extract.staging import publish, staging_database

    with connect_engine(settings.warehouse_url, read_only=False) as warehouse:
        ensure_tables(warehouse)
        with staging_database(warehouse, specs) as con:
            try:
                results = _extract(con, specs, as_of, run_id, sources, force)
            except ExtractError:
                publish(con, warehouse, specs)  # the sources that loaded, as on DuckDB
                raise
            publish(con, warehouse, specs)
            return results


def _extract(
    con, specs: list[SourceSpec], as_of: date, run_id: str, sources: tuple[str, ...] | None, force: bool
) -> dict[str, SourceResult]:
    """run_extract on the DuckDB connection `con` (the warehouse, or a staging database)."""
    results: dict[str, SourceResult] = {}
    errors: list[str] = []
    ctx = LoadContext(
        run_id, as_of, datetime.now(UTC).replace(tzinfo=None), pii_salt=resolve_salt(DuckDBEngine(con), specs)
    )
    with transaction(con):
        con.execute("DELETE FROM raw.sources")
        con.executemany(
            "INSERT INTO raw.sources VALUES (?, ?, ?, ?, ?)",
            [[s.name, s.dataset.name, s.kind, _location(s), ctx.now] for s in specs],
        )
    for spec in specs:
        if sources is not None and spec.name not in sources:
            continue
        result = SourceResult(spec.name, spec.dataset.name, spec.kind)
        try:
            # File sources commit file by file (see segflow.extract.files); the others as one batch.
            with contextlib.nullcontext() if spec.kind == "files" else transaction(con):
                batches = _extract_source(con, spec, ctx, force)
        except ExtractError as exc:  # rolled back: the refused batch loads nothing, the other sources go on
            log.error("extract %s refused: %s", spec.name, exc)
            errors.append(str(exc))
            continue
        for b in batches:
            result.files_loaded += 1
            result.rows_in += b.rows_in
            result.rows_loaded += b.rows_loaded
            result.rows_quarantined += b.rows_quarantined
            result.new_rows += b.new_rows
            result.details.append(
                {
                    "batch": b.partition,
                    "rows_in": b.rows_in,
                    "rows_loaded": b.rows_loaded,
                    "rows_quarantined": b.rows_quarantined,
                    "notes": b.notes,
                }
            )
        results[spec.name] = result
        log.info(
            "extract %s (%s, %s): batches=%d rows_in=%d loaded=%d quarantined=%d",
            spec.name,
            spec.kind,
            spec.dataset.name,
            result.files_loaded,
            result.rows_in,
            result.rows_loaded,
            result.rows_quarantined,
        )
    if errors:
        raise ExtractError("; ".join(errors))
    return results
