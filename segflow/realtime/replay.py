"""Publishing events to the stream (a day's file, in scaled real time) and reconciling the stream with batch.

- `replay`: the events of one day's JSON-lines file(s) published to `<prefix>:events` in event-time order -
  as fast as the consumer takes them, or in scaled real time (`speed` x), optionally re-stamped to the present so
  a live consumer (clock: wall) treats them as happening now (the demo: see a trigger fire).
- `reconcile`: the dbt model trigger_transitions (the same rules in batch over one day) against the transitions
  the stream emitted for that day.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from segflow.realtime import engine
from segflow.realtime.consumer import StreamKeys
from segflow.realtime.contract import parse_timestamp

PUBLISH_CHUNK = 1_000


def context_start(day: date, rules) -> datetime:
    """From when events decide the transitions of `day`: twice the rules' longest lookback before it (what the dbt
    model trigger_transitions reads; a replay from here reproduces a stream that ran across midnight)."""
    lookback = max((r.window_minutes + (r.active_minutes or 0)) for r in rules)
    return datetime.combine(day, datetime.min.time(), UTC) - timedelta(minutes=2 * lookback)


def day_events(events_dir: Path, day: date, since: datetime | None = None) -> list[dict[str, str]]:
    """The events of `day` (by event time, UTC) - or from `since` to the end of `day` - in the files of those days'
    names, ordered by event time.

    Args:
        events_dir: the events files source folder (`YYYY-MM-DD.jsonl(.gz)` files).
        day: the (last) day.
        since: the first event time wanted (default: the start of `day`).

    Returns:
        The events as text fields (what a producer would publish), each with an `event_ts`.
    """
    start = since or datetime.combine(day, datetime.min.time(), UTC)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    rows: list[tuple[datetime, dict[str, str]]] = []
    paths = []
    current = start.date()
    while current <= day:
        paths += sorted(events_dir.glob(f"{current.isoformat()}*.jsonl*"))
        current += timedelta(days=1)
    for path in paths:
        opener: Callable = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                record = json.loads(line)
                fields = {k: str(v) for k, v in record.items() if v is not None}
                try:
                    moment = parse_timestamp(fields.get("event_ts", ""))
                except ValueError:
                    continue
                if start <= moment < end:
                    rows.append((moment, fields))
    rows.sort(key=lambda r: (r[0], r[1].get("event_id", "")))
    return [fields for _, fields in rows]


def group_lag(client, keys: StreamKeys, group: str) -> int:
    """Entries of the input stream the group has not read yet, plus those it holds unacknowledged."""
    groups = {g["name"]: g for g in client.xinfo_groups(keys.events)} if client.exists(keys.events) else {}
    info = groups.get(group)
    if info is None:
        return client.xlen(keys.events) if client.exists(keys.events) else 0
    return int(info.get("lag") or 0) + int(info.get("pending") or 0)


def replay(
    client,
    keys: StreamKeys,
    rows: list[dict[str, str]],
    speed: float | None = None,
    restamp: bool = False,
    group: str | None = None,
    max_lag: int = 100_000,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Publish `rows` in order. Returns how many were published.

    Args:
        speed: None: as fast as possible; else `speed` seconds of event time per second.
        restamp: shift every event time by the same amount so the first is now (keeps the spacing, scaled).
        group: wait while this consumer group lags more than `max_lag` entries behind (backpressure).
    """
    if not rows:
        return 0
    first = parse_timestamp(rows[0]["event_ts"])
    started = clock()
    sent = 0
    for chunk in _chunks(rows, PUBLISH_CHUNK if speed is None else 50):
        if group is not None:
            while group_lag(client, keys, group) > max_lag:
                sleep(0.05)
        pipe = client.pipeline(transaction=False)
        for fields in chunk:
            moment = parse_timestamp(fields["event_ts"])
            offset = (moment - first).total_seconds() / (speed or 1.0)
            if speed is not None:
                wait = started + offset - clock()
                if wait > 0:
                    pipe.execute()
                    sleep(wait)
                    pipe = client.pipeline(transaction=False)
            if restamp:
                now = datetime.fromtimestamp(started + offset, UTC)
                fields = dict(fields, event_ts=engine.iso(engine.to_us(now)))
            pipe.xadd(keys.events, fields)
            sent += 1
        pipe.execute()
    return sent


def _chunks(rows: list, size: int) -> Iterator[list]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def stream_transitions(client, keys: StreamKeys, day: date) -> set[tuple[str, str, str, str, str | None]]:
    """(rule, user, change, at, product category of an entry) of the output stream's transitions on `day`."""
    out = set()
    start = datetime.combine(day, datetime.min.time(), UTC)
    end = start + timedelta(days=1)
    for _, fields in client.xrange(keys.output):
        at = parse_timestamp(fields["at"])
        if start <= at < end:
            evidence = json.loads(fields["evidence"])
            category = evidence.get("product_category") if fields["change"] == "entered" else None
            out.add((fields["rule"], fields["user_id"], fields["change"], engine.iso(engine.to_us(at)), category))
    return out


def batch_transitions(
    settings, day: date, profile_as_of: date | None = None
) -> set[tuple[str, str, str, str, str | None]]:
    """The same for the dbt model trigger_transitions, built for `day` (the day's events must be loaded);
    `profile_as_of`: the published profile `return` rules read (default: the last one before the day)."""
    from segflow.core.dbt import dbt_vars, run_dbt
    from segflow.core.engines import connect_engine

    extra = {"trigger_profile_as_of": profile_as_of.isoformat()} if profile_as_of else {}
    run_dbt(
        settings,
        ["run", "--select", "trigger_transitions", "--quiet"],
        vars=dbt_vars(day.isoformat(), settings, **extra),
    )
    with connect_engine(settings.warehouse_url) as warehouse:
        frame = warehouse.frame(
            "SELECT trigger_name, user_id, transition, changed_at, product_category FROM triggers.trigger_transitions"
        )
    return {
        (
            rule,
            user,
            change,
            engine.iso(engine.to_us(at.to_pydatetime())),
            category if isinstance(category, str) else None,
        )
        for rule, user, change, at, category in frame.itertuples(index=False, name=None)
    }


def reconcile(settings, client, keys: StreamKeys, day: date, profile_as_of: date | None = None) -> dict:
    """Batch against stream for `day`: counts and the transitions only one of them has."""
    batch = batch_transitions(settings, day, profile_as_of)
    stream = stream_transitions(client, keys, day)
    return {
        "day": day.isoformat(),
        "batch": len(batch),
        "stream": len(stream),
        "only_batch": sorted(batch - stream, key=str),
        "only_stream": sorted(stream - batch, key=str),
    }
