"""`segflow stream`: the consumer that turns the event stream into real-time trigger memberships.

Redis keys (prefix `stream.key_prefix`, default `segflow`):
- `<p>:events`          the input stream (entries: the canonical event columns), read by the consumer group;
- `<p>:events:dead`     the dead-letter stream: entry id, column and reason (the batch extract's), raw fields;
- `<p>:triggers`        the output stream: rule, user_id, change (entered/exited), at (event time), evidence;
- `<p>:triggers:notify` a pub/sub channel told the number of new entries (Airflow's AssetWatcher listens there);
- `<p>:rt:active:<user>` the user's active triggers (hash rule -> JSON), which the segment API adds to the profile;
- `<p>:rt:user:<user>`  the user's state (segflow.realtime.engine.UserState), `<p>:rt:timers` when each is due,
  `<p>:rt:clock` the watermark, `<p>:rt:lock` the one consumer that owns them.

Delivery is at-least-once (a consumer group; entries are acknowledged only once their event has been evaluated),
and each round's effects - states, timers, output and dead-letter entries, active triggers, watermark and the
acknowledgements - are one MULTI/EXEC transaction: a killed consumer's last round is applied whole or not at all,
so after a restart nothing is lost and nothing fires twice. Re-sent events are recognised by event_id.

Event time: an event is evaluated once the watermark passes its time (the newest event time seen, or this machine's
clock with `stream.clock: wall`, minus `stream.allowed_lateness_seconds`); an event arriving after that is late:
dead-lettered with that reason (it still reaches the batch path).

Identity and consent: an event counts for the user the published identity graph (the serving store) links its
`user_id` or `anonymous_id` to - links that exist only for users who consented to tracking, as in the batch
features. Events of people not (yet) in the graph are passed to the batch path only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from segflow.realtime import engine
from segflow.realtime.contract import Rejected, check_event
from segflow.realtime.rules import TriggerRule, intent_weights, load_rules

log = logging.getLogger(__name__)

OUTPUT_MAXLEN = 1_000_000  # approximate trim of the output stream (the activation DAG reads it within minutes)
TRIM_EVERY_SECONDS = 5.0
TIMERS_PER_ROUND = 5_000
DEAD_MAXLEN = 1_000_000  # approximate trim of the dead-letter stream (the batch keeps its own quarantine)
IDENTITY_CACHE = 1_000_000  # resolved (user id, anonymous id) pairs kept per serving version
LOCK_SECONDS = 30  # the consumer lock's lifetime, renewed every round
DAY_FIELD = "_segflow_day"
FUTURE_TOLERANCE_US = 5 * 60 * 1_000_000  # with the wall clock: later event times are refused, as is_future_timestamp


class StreamKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.events = f"{prefix}:events"
        self.dead = f"{prefix}:events:dead"
        self.output = f"{prefix}:triggers"
        self.notify = f"{prefix}:triggers:notify"
        self.timers = f"{prefix}:rt:timers"
        self.clock = f"{prefix}:rt:clock"
        self.lock = f"{prefix}:rt:lock"
        self.delivered = f"{prefix}:activate:delivered"  # segflow_activate's checkpoint: the last entry delivered

    def state(self, user: str) -> str:
        return f"{self.prefix}:rt:user:{user}"

    def active(self, user: str) -> str:
        return f"{self.prefix}:rt:active:{user}"


def redis_client(url: str, timeout: float | None = 10.0):
    import redis

    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=5)


class Identity:
    """The published identity graph and profiles (the serving store), cached per serving version. Used inside
    `scope()`, which holds one serving version for a round."""

    def __init__(self, store) -> None:
        self.store = store
        self._version: str | None = None
        self._view = None
        self._users: dict[tuple[str | None, str | None], str | None] = {}
        self._stages: dict[str, str | None] = {}
        self._warned = False

    @contextlib.contextmanager
    def scope(self) -> Iterator[Identity]:
        with self.store.view() as view:
            if view is None and not self._warned:
                self._warned = True
                log.warning(
                    "no serving version is loaded: events are not attributed to anyone until a scoring run "
                    "(or segflow serving sync) publishes the identity graph"
                )
            if view is None or view.version != self._version:
                self._users, self._stages = {}, {}
                self._version = None if view is None else view.version
            self._view = view
            try:
                yield self
            finally:
                self._view = None

    def resolve(self, analytics_user_id: str | None, anonymous_id: str | None) -> tuple[str | None, str | None]:
        """(user, lifecycle stage) of an event's ids, or (None, None) when the graph does not link them."""
        view = self._view
        if view is None:
            return None, None
        key = (analytics_user_id, anonymous_id)
        if len(self._users) > IDENTITY_CACHE:
            self._users.clear()
        if key not in self._users:
            user = view.resolve(f"analytics_user_id:{analytics_user_id}") if analytics_user_id else None
            if user is None and anonymous_id:
                user = view.resolve(f"anonymous_id:{anonymous_id}")
            self._users[key] = user
        user = self._users[key]
        return (user, self.stage(user)) if user is not None else (None, None)

    def stage(self, user: str) -> str | None:
        """The lifecycle stage of the user's published profile."""
        if self._view is None:
            return None
        if user not in self._stages:
            self._stages[user] = (self._view.profile(user) or {}).get("lifecycle_stage")
        return self._stages[user]


@dataclass
class _Held:
    """An event waiting for the watermark."""

    event: engine.Event
    entry_id: str
    fields: dict[str, str]
    stage: str | None


@dataclass
class Counters:
    read: int = 0
    evaluated: int = 0
    transitions: int = 0
    dead: int = 0
    late: int = 0
    duplicates: int = 0
    unattributed: int = 0
    rounds: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Round:
    states: dict[str, engine.UserState] = field(default_factory=dict)
    acks: list[str] = field(default_factory=list)
    dead: list[dict[str, str]] = field(default_factory=list)
    drop: list[dict[str, str]] = field(default_factory=list)
    transitions: list[engine.Transition] = field(default_factory=list)


class StreamConsumer:
    """One member of the consumer group. `step()` runs one round; `run()` loops until stopped."""

    def __init__(
        self,
        settings,
        client=None,
        store=None,
        rules: list[TriggerRule] | None = None,
        weights: dict[str, float] | None = None,
        clock=time.time,
    ) -> None:
        from segflow.serving.store import open_store

        cfg = settings.raw["stream"]
        if client is None and not cfg.get("url"):
            raise RuntimeError("stream.url is not set: segflow stream needs a Redis (e.g. redis://127.0.0.1:6379/0)")
        self.client = client if client is not None else redis_client(cfg["url"])
        self.keys = StreamKeys(cfg["key_prefix"])
        self.group = cfg["group"]
        self.name = cfg["consumer"]
        self.lateness_us = int(cfg["allowed_lateness_seconds"] * 1_000_000)
        self.wall = cfg["clock"] == "wall"
        self.batch_size = cfg["batch_size"]
        self.max_pending = cfg["max_pending"]
        self.state_ttl = cfg["state_ttl_hours"] * 3600
        drop_dir = _drop_dir(settings)
        self.drop = DropWriter(drop_dir, self.name) if drop_dir is not None else None
        self.evaluator = engine.Evaluator(
            rules if rules is not None else load_rules(), weights if weights is not None else intent_weights()
        )
        if self.state_ttl * 1_000_000 <= self.evaluator.horizon_us:
            raise RuntimeError(
                f"stream.state_ttl_hours ({cfg['state_ttl_hours']}) must exceed the longest rule lookback "
                f"({self.evaluator.horizon_us / 3.6e9:g} h): a user's state would expire while a rule still reads it"
            )
        self.identity = Identity(store if store is not None else open_store(settings))
        self.clock = clock
        self.counters = Counters()
        self.pending: dict[str, list[_Held]] = defaultdict(list)
        self.pending_ids: set[str] = set()
        self._caught_up = False  # the last read left nothing unread in the stream
        self._reading_own = True  # after a restart: re-read this consumer's unacknowledged entries first
        self._own_after = "0"
        self._last_read = clock()
        self._last_trim = 0.0
        saved = self.client.hgetall(self.keys.clock)
        self.watermark: int | None = int(saved["watermark"]) if saved.get("watermark") else None
        self.max_seen: int | None = int(saved["max_seen"]) if saved.get("max_seen") else None

    # --- the group -------------------------------------------------------------------------------------------

    def lock(self) -> None:
        """Hold `<prefix>:rt:lock`: the users' states, timers and clock are this consumer's alone. The same name
        takes it over at once (a restart after a kill); another name is refused while it is held."""
        key = self.keys.lock
        if not self.client.set(key, self.name, nx=True, ex=LOCK_SECONDS) and self.client.get(key) != self.name:
            raise RuntimeError(
                f"another consumer ({self.client.get(key)}) holds {key}: one consumer per key prefix "
                "(restart it under its own stream.consumer name to take over)"
            )
        self.client.set(key, self.name, ex=LOCK_SECONDS)

    def ensure_group(self) -> None:
        import redis

        try:
            # From the stream's start: events published before the first consumer ran are read too.
            self.client.xgroup_create(self.keys.events, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self, block_ms: int) -> list[tuple[str, dict[str, str] | None]]:
        if len(self.pending_ids) >= self.max_pending:
            self._caught_up = False
            return []  # backpressure: the entries wait in the stream until the held events are evaluated
        count = min(self.batch_size, self.max_pending - len(self.pending_ids))
        if self._reading_own:
            got = self.client.xreadgroup(self.group, self.name, {self.keys.events: self._own_after}, count=count)
            entries = got[0][1] if got else []
            if len(entries) < count:
                self._reading_own = False
            if entries:
                self._own_after = entries[-1][0]
            entries = [(i, f) for i, f in entries if i not in self.pending_ids]
            if entries or self._reading_own:
                return entries
            # This consumer's own unacknowledged entries are all read: new ones below.
        got = self.client.xreadgroup(
            self.group, self.name, {self.keys.events: ">"}, count=count, block=block_ms or None
        )
        entries = got[0][1] if got else []
        self._caught_up = len(entries) < count
        return entries

    # --- one round -------------------------------------------------------------------------------------------

    def step(self, block_ms: int = 50, until: int | None = None) -> list[engine.Transition]:
        """Read what is there, advance the watermark (to `until` when given: a replay's end), evaluate what it
        passed, commit. Returns the transitions committed."""
        # Holding events that wait for the watermark: wait at most 10 ms for more, then move time on.
        entries = self._read(min(block_ms, 10) if self.pending_ids else block_ms)
        now = self.clock()
        work = _Round()
        if entries:
            self._last_read = now
            with self.identity.scope() as identity:
                for entry_id, fields in entries:
                    self._take(entry_id, fields, identity.resolve, work, now)
        self._advance(now, until)
        self._evaluate(work)
        self._commit(work)
        self.counters.rounds += 1
        return work.transitions

    def _take(self, entry_id: str, fields: dict[str, str] | None, resolve, work: _Round, now: float) -> None:
        self.counters.read += 1
        if fields is None:  # trimmed away while pending: nothing left to read
            work.acks.append(entry_id)
            return
        try:
            record = check_event(fields)
        except Rejected as exc:
            self._dead(work, entry_id, exc.column, exc.reason, fields)
            return
        moment = record["event_ts"]
        assert isinstance(moment, datetime)
        ts = engine.to_us(moment)
        dropped = {**fields, DAY_FIELD: moment.date().isoformat()}  # the UTC date: the batch's file date
        if self.wall and ts > now * 1_000_000 + FUTURE_TOLERANCE_US:
            self._dead(work, entry_id, "event_ts", "event time more than 5 minutes in the future", fields)
            work.drop.append(dropped)
            return
        if self.watermark is not None and ts <= self.watermark:
            self.counters.late += 1
            self._dead(
                work,
                entry_id,
                "event_ts",
                f"late: {engine.iso(ts)} is before the watermark {engine.iso(self.watermark)} "
                f"(allowed lateness {self.lateness_us / 1e6:g} s): not evaluated for triggers",
                fields,
            )
            work.drop.append(dropped)
            return
        self.max_seen = ts if self.max_seen is None else max(self.max_seen, ts)
        user, stage = resolve(record.get("user_id"), record.get("anonymous_id"))
        if user is None:
            self.counters.unattributed += 1
            work.acks.append(entry_id)
            work.drop.append(dropped)
            return
        # Normalised as staging does (base_analytics__events): the rules compare lower-case types and categories.
        category = record.get("product_category")
        event = engine.Event(
            ts, str(record["event_type"]).lower(), str(category).lower() if category else None, str(record["event_id"])
        )
        held = self.pending[user]
        if any(h.event.event_id == event.event_id for h in held):
            self.counters.duplicates += 1
            work.acks.append(entry_id)
            return
        held.append(_Held(event, entry_id, dropped, stage))
        self.pending_ids.add(entry_id)

    def _dead(self, work: _Round, entry_id: str, column: str, reason: str, fields: dict[str, str]) -> None:
        self.counters.dead += 1
        work.acks.append(entry_id)
        raw = json.dumps(fields, ensure_ascii=False)
        work.dead.append(
            {"entry_id": entry_id, "column": column, "reason": reason, "raw": raw[:10_000], "stream": self.keys.events}
        )

    def _advance(self, now: float, until: int | None) -> None:
        candidates = [self.watermark] if self.watermark is not None else []
        if until is not None:
            candidates.append(until)
        if self.max_seen is not None:
            # With the wall clock, an event stamped ahead of it (a device's fast clock) moves time no further than now.
            seen = min(self.max_seen, int(now * 1_000_000)) if self.wall else self.max_seen
            candidates.append(seen - self.lateness_us)
            if not self.wall and now - self._last_read > self.lateness_us / 1e6 + 0.05:
                candidates.append(self.max_seen)  # idle for longer than the lateness: what was seen is complete
        if len(self.pending_ids) >= self.max_pending and self.pending:
            # Backpressure with a full buffer: the oldest held events are evaluated now, so it drains (an unread
            # entry older than them is then late - max_pending should hold `rate x allowed lateness` events).
            candidates.append(min(h.event.ts for held in self.pending.values() for h in held))
        if self.wall and self._caught_up:
            # This machine's clock moves time on only when nothing waits unread: a consumer working through a
            # backlog would otherwise call every waiting event late.
            candidates.append(int(now * 1_000_000) - self.lateness_us)
        if candidates:
            self.watermark = max(candidates)

    def _evaluate(self, work: _Round) -> None:
        if self.watermark is None:
            return
        wm = self.watermark
        due: dict[str, list[_Held]] = {}
        for user, held in list(self.pending.items()):
            ready = [h for h in held if h.event.ts <= wm]
            if ready:
                due[user] = ready
                rest = [h for h in held if h.event.ts > wm]
                if rest:
                    self.pending[user] = rest
                else:
                    del self.pending[user]
        # Bounded per round (after an outage a whole day's timers are due at once); the rest come next round.
        timed = self.client.zrangebyscore(self.keys.timers, "-inf", wm, start=0, num=TIMERS_PER_ROUND)
        users = sorted(set(due) | set(timed))
        if not users:
            return
        texts = self.client.mget([self.keys.state(u) for u in users])
        stages: dict[str, str | None] = {}
        if any(u not in due for u in users):
            with self.identity.scope() as identity:
                stages = {u: identity.stage(u) for u in users if u not in due}
        for user, text in zip(users, texts, strict=True):
            state = engine.UserState.loads(text)
            new = []
            for h in due.get(user, []):
                self.pending_ids.discard(h.entry_id)
                work.acks.append(h.entry_id)
                work.drop.append(h.fields)
                stages[user] = h.stage
                if state.seen(h.event.event_id) or (state.done_to is not None and h.event.ts <= state.done_to):
                    self.counters.duplicates += 1
                    continue
                new.append(h.event)
            self.counters.evaluated += len(new)
            work.transitions.extend(self.evaluator.advance(user, state, new, wm, stages.get(user)))
            work.states[user] = state

    def _commit(self, work: _Round) -> None:
        if self.drop is not None and work.drop:
            self.drop.write(work.drop)
        pipe = self.client.pipeline(transaction=True)
        for user, state in work.states.items():
            due = self.evaluator.next_timer(state)
            if state.events or state.active:
                pipe.set(self.keys.state(user), state.dumps(), ex=self.state_ttl)
                if state.active:
                    pipe.expire(self.keys.active(user), self.state_ttl)
            else:
                pipe.delete(self.keys.state(user))
            if due is None:
                pipe.zrem(self.keys.timers, user)
            else:
                pipe.zadd(self.keys.timers, {user: due})
        for t in work.transitions:
            pipe.xadd(self.keys.output, t.message(), maxlen=OUTPUT_MAXLEN, approximate=True)
            if t.change == "entered":
                doc = json.dumps({"since": engine.iso(t.at), "evidence": t.evidence}, sort_keys=True)
                pipe.hset(self.keys.active(t.user_id), t.rule, doc)
                pipe.expire(self.keys.active(t.user_id), self.state_ttl)
            else:
                pipe.hdel(self.keys.active(t.user_id), t.rule)
        for entry in work.dead:
            pipe.xadd(self.keys.dead, entry, maxlen=DEAD_MAXLEN, approximate=True)
        if self.watermark is not None:
            pipe.hset(self.keys.clock, mapping={"watermark": self.watermark, "max_seen": self.max_seen or ""})
        if work.acks:
            pipe.xack(self.keys.events, self.group, *work.acks)
        if work.transitions:
            pipe.publish(self.keys.notify, json.dumps({"entries": len(work.transitions)}))
        pipe.execute()
        self.counters.transitions += len(work.transitions)
        now = self.clock()
        if now - self._last_trim > TRIM_EVERY_SECONDS:
            self._last_trim = now
            self._trim()

    def _trim(self) -> None:
        """Drop input entries every group member has acknowledged (the stream would otherwise only grow)."""
        summary = self.client.xpending(self.keys.events, self.group)
        oldest = summary.get("min") if summary and summary.get("pending") else None
        if oldest is None:
            groups = {g["name"]: g for g in self.client.xinfo_groups(self.keys.events)}
            oldest = groups.get(self.group, {}).get("last-delivered-id")
            if not oldest or oldest == "0-0":
                return
            ms, seq = (int(p) for p in oldest.split("-"))
            oldest = f"{ms}-{seq + 1}"
        self.client.xtrim(self.keys.events, minid=oldest, approximate=True)

    def idle(self) -> bool:
        """Nothing held and nothing left in the group for this consumer."""
        return not self.pending_ids and not self._reading_own

    def run(self, should_stop=lambda: False, report_every: float = 30.0) -> None:
        """Consume until should_stop() is true; logs the counters every `report_every` seconds."""
        self.ensure_group()
        last = locked = self.clock()
        self.lock()
        while not should_stop():
            if self.clock() - locked > LOCK_SECONDS / 3:
                locked = self.clock()
                self.lock()
            self.step(block_ms=100)
            if self.clock() - last >= report_every:
                last = self.clock()
                log.info(
                    "stream: %s watermark %s", self.counters.as_dict(), self.watermark and engine.iso(self.watermark)
                )


def _drop_dir(settings) -> Path | None:
    configured = settings.raw["stream"].get("drop_dir")
    if configured:
        return Path(configured)
    events = (settings.raw.get("sources") or {}).get("events") or {}
    if events.get("path") and Path(events["path"]).is_dir():
        return Path(events["path"]) / "stream"
    return None


class DropWriter:
    """Appends the events the consumer acknowledges to JSON-lines files the events files source reads:
    `<drop_dir>/<event date>/<consumer>.jsonl` (the date in the path is the file date). Each round's lines are
    written and synced before its acknowledgements commit; a round redone after a crash writes its events again and
    the batch deduplicates them by event_id. A line cut short by a kill is ended before the next append, so it stays
    one unreadable line (quarantined by the batch, its event written whole again) and never spoils the next."""

    def __init__(self, base: Path, consumer: str) -> None:
        self.base = base
        self.name = "".join(c if c.isalnum() or c in "-_" else "-" for c in consumer) + ".jsonl"
        self._checked: set[Path] = set()

    def write(self, rows: list[dict[str, str]]) -> None:
        by_day: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            day = row.get(DAY_FIELD, "undated")
            by_day[day].append(json.dumps({k: v for k, v in row.items() if k != DAY_FIELD}, ensure_ascii=False))
        for day, lines in by_day.items():
            target = self.base / day / self.name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "ab") as handle:
                if target not in self._checked:
                    self._checked.add(target)
                    if handle.tell() > 0:
                        with open(target, "rb") as tail:
                            tail.seek(-1, os.SEEK_END)
                            if tail.read(1) != b"\n":
                                handle.write(b"\n")
                handle.write(("\n".join(lines) + "\n").encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
