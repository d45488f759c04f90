"""Relational sources (the CRM) through any SQLAlchemy URL, incremental by an updated-at watermark.

The watermark is the latest version already loaded from this source. A run for as-of D reads rows with
watermark - lookback <= updated_at < D + 1 day (the whole table up to D on the first run); the lookback
catches late-committed updates. Versions already loaded, keyed by (key, updated_at), are skipped, so
overlapping windows and reruns never duplicate, and every version seen is kept for point-in-time staging.
Rows whose updated_at is empty are read every time and quarantined (never silently skipped).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa

from segflow.core.connections import sqlalchemy_url
from segflow.extract.errors import ExtractError
from segflow.extract.loader import BatchResult, LoadContext, load_batch
from segflow.extract.readers import Batch, _register
from segflow.extract.spec import SourceSpec

DEFAULT_LOOKBACK_HOURS = 72


def _timestamp_literal(moment: datetime) -> str:
    # Compared as text by SQLite and cast by PostgreSQL; ISO with a space sorts like the stored values.
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _watermark_binder(engine, table, column):
    """How a moment is compared with the source's watermark column, in the column's own type: epoch numbers
    (seconds, or milliseconds when the values are that large) for numeric columns, datetimes for date-time
    columns, ISO text otherwise. Comparing an integer column with text made SQLite select nothing after the
    first run (integers sort before text), silently."""
    import sqlalchemy as sa

    kind = column.type
    if isinstance(kind, (sa.Integer, sa.Numeric, sa.Float)):
        with engine.connect() as conn:
            largest = conn.execute(sa.select(sa.func.max(column)).select_from(table)).scalar()
        scale = 1000 if largest is not None and abs(float(largest)) >= 1e11 else 1

        def epoch(moment: datetime):
            return sa.literal(int(moment.replace(tzinfo=UTC).timestamp() * scale))

        return epoch
    if isinstance(kind, (sa.DateTime, sa.Date)):
        return lambda moment: sa.literal(moment, type_=kind)
    return lambda moment: sa.literal(_timestamp_literal(moment))


def source_url(spec: SourceSpec) -> str:
    if spec.get("conn_id"):
        return sqlalchemy_url(spec.options["conn_id"])
    return spec.options["url"]


def extract_sql(con, spec: SourceSpec, ctx: LoadContext) -> list[BatchResult]:
    import sqlalchemy as sa

    version_column = spec.get("watermark_column", spec.dataset.watermark)
    if version_column not in spec.dataset.names:
        raise ValueError(
            f"sources.{spec.name}.watermark_column: {version_column!r} is not a {spec.dataset.name} column"
        )
    table_name = spec.get("table", "contacts")
    url = source_url(spec)
    engine = sa.create_engine(url)
    safe_url = engine.url.render_as_string(hide_password=True)
    origin = f"{safe_url} table {table_name}"
    watermark = con.execute(
        f"SELECT max({version_column}) FROM raw.{spec.dataset.raw_table} WHERE _source = ?", [spec.name]
    ).fetchall()[0][0]
    upper = datetime.combine(ctx.as_of, datetime.min.time()) + timedelta(days=1)
    lower = (
        watermark - timedelta(hours=float(spec.get("lookback_hours", DEFAULT_LOOKBACK_HOURS))) if watermark else None
    )
    try:
        try:
            table = sa.Table(table_name, sa.MetaData(), schema=spec.get("schema"), autoload_with=engine)
        except sa.exc.NoSuchTableError as exc:
            raise ExtractError(f"{origin}: table '{table_name}' does not exist") from exc
        columns = {c.name.strip().lower(): c for c in table.columns}
        source_name = next(
            (src for src, target in spec.mapping.rename.items() if target == version_column), version_column
        )
        wcol = columns.get(source_name.strip().lower())
        if wcol is None:
            raise ExtractError(
                f"{origin}: missing watermark column '{source_name}' (for {version_column}); "
                f"columns present: {', '.join(c.name for c in table.columns)}"
            )
        bound = _watermark_binder(engine, table, wcol)
        window = wcol < bound(upper)
        if lower is not None:
            window = sa.and_(window, wcol >= bound(lower))
        query = sa.select(table).where(sa.or_(window, wcol.is_(None)))
        with engine.connect() as conn:
            cursor = conn.execute(query)
            names = list(cursor.keys())
            rows = cursor.fetchall()
    except sa.exc.SQLAlchemyError as exc:
        raise ExtractError(f"{origin}: cannot read: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc
    finally:
        engine.dispose()

    def text(value):
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.isoformat(sep=" ")
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    arrays = {name: pa.array([text(r[i]) for r in rows], pa.string()) for i, name in enumerate(names)}
    _register(con, pa.table({"_row_ref": pa.array([f"row {i + 1}" for i in range(len(rows))], pa.string()), **arrays}))
    batch = Batch(origin, names, len(rows))
    plan = spec.mapping.plan(spec.dataset, names, origin)
    partition = f"{table_name}@{spec.name}"
    result = load_batch(
        con,
        ctx,
        spec.name,
        spec.dataset,
        plan,
        batch,
        partition,
        ctx.as_of,
        mode="versions",
        version_column=version_column,
    )
    window_note = f"window [{_timestamp_literal(lower) if lower else 'start'}, {_timestamp_literal(upper)})"
    result.notes.append(window_note)
    return [result]
