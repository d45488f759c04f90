"""Event-time evaluation of the trigger rules for one user: pure functions over a small state, no I/O.

A rule's membership at time T is a function of the user's events up to T (segflow.realtime.rules says which); it
can only change at a rule's change points - an event's time, an event's time plus the window, and for `absence`
rules the start event plus the window and plus the active period. `advance` processes the user's new events and
evaluates every change point in (done_to, until] in time order, so the transitions it emits do not depend on the
order events arrived in, as long as each arrived before the watermark passed its time (the consumer's allowed
lateness). The dbt model models/triggers/trigger_transitions.sql evaluates the same change points in SQL.

Times are integer microseconds since the Unix epoch (UTC): comparisons are exact, as in the warehouse.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from segflow.realtime.rules import TriggerRule

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Per user: more events than this inside the rules' windows is a bot or a replay loop, not a person; the oldest go.
MAX_EVENTS_PER_USER = 500


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (naive ones are read as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1)


def iso(us: int) -> str:
    """The ISO 8601 UTC text of a time in microseconds (what the output stream carries)."""
    moment = EPOCH + timedelta(microseconds=us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment.microsecond else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    ts: int  # event time, microseconds since the epoch
    event_type: str
    category: str | None
    event_id: str

    @property
    def key(self) -> tuple[int, str]:
        """Events are ordered by time, then event_id (as the dbt model breaks ties)."""
        return (self.ts, self.event_id)


@dataclass(frozen=True)
class Transition:
    rule: str
    user_id: str
    change: str  # entered | exited
    at: int  # event time of the change, microseconds
    evidence: dict

    def message(self) -> dict[str, str]:
        """The output stream entry (every value text, as Redis stores them)."""
        return {
            "rule": self.rule,
            "user_id": self.user_id,
            "change": self.change,
            "at": iso(self.at),
            "evidence": json.dumps(self.evidence, sort_keys=True, separators=(",", ":")),
        }


@dataclass
class UserState:
    """What the consumer keeps per user between batches (stored as JSON with a TTL in Redis)."""

    events: list[Event] = field(default_factory=list)  # processed events still needed, by time
    active: dict[str, tuple[int, dict]] = field(default_factory=dict)  # rule -> (entered at, evidence)
    done_to: int | None = None  # change points up to this time are evaluated

    def seen(self, event_id: str) -> bool:
        return any(e.event_id == event_id for e in self.events)

    def dumps(self) -> str:
        return json.dumps(
            {
                "e": [[e.ts, e.event_type, e.category, e.event_id] for e in self.events],
                "a": {rule: [since, evidence] for rule, (since, evidence) in self.active.items()},
                "d": self.done_to,
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, text: str | bytes | None) -> UserState:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            [Event(*e) for e in data["e"]],
            {rule: (since, evidence) for rule, (since, evidence) in data["a"].items()},
            data["d"],
        )


class Evaluator:
    """The rules with what they read: which event types each needs and how far back."""

    def __init__(self, rules: list[TriggerRule], weights: dict[str, float]) -> None:
        self.rules = rules
        self.weights = weights
        self._reads: dict[str, frozenset[str] | None] = {}
        for rule in rules:
            if rule.kind == "points":
                self._reads[rule.name] = frozenset(t for t, w in weights.items() if w)
            elif rule.kind in ("repeat_without", "absence"):
                self._reads[rule.name] = frozenset(rule.event_types + rule.cancel_event_types)
            else:
                self._reads[rule.name] = None  # every event type
        self.horizon_us = max((r.lookback_us for r in rules), default=0)

    def _reads_type(self, rule: TriggerRule, event: Event) -> bool:
        reads = self._reads[rule.name]
        return reads is None or event.event_type in reads

    def _relevant(self, rule: TriggerRule, events: list[Event]) -> list[Event]:
        reads = self._reads[rule.name]
        return events if reads is None else [e for e in events if e.event_type in reads]

    def change_points(self, rule: TriggerRule, relevant: list[Event]) -> set[int]:
        """Where the rule's membership may change, given the events it reads (`_relevant`)."""
        points: set[int] = set()
        for e in relevant:
            if rule.kind == "absence":
                if e.event_type in rule.cancel_event_types:
                    points.add(e.ts)
                if e.event_type in rule.event_types:
                    points.add(e.ts + rule.window_us)
                    points.add(e.ts + rule.window_us + rule.active_us)
            else:
                points.add(e.ts)
                points.add(e.ts + rule.window_us)
        return points

    def member(self, rule: TriggerRule, relevant: list[Event], at: int, stage: str | None) -> dict | None:
        """The evidence when the user is a member of `rule` at time `at`, else None (relevant: the events of theirs
        up to `at` that the rule reads)."""
        if rule.kind == "absence":
            cancelled = max(
                (e.ts for e in relevant if e.event_type in rule.cancel_event_types and e.ts <= at), default=None
            )
            starts = [
                e
                for e in relevant
                if e.event_type in rule.event_types
                and at - rule.window_us - rule.active_us < e.ts <= at - rule.window_us
                and (cancelled is None or e.ts >= cancelled)
            ]
            if not starts:
                return None
            first = min(starts, key=lambda e: e.key)
            return {"event_type": first.event_type, "product_category": first.category, "started_at": iso(first.ts)}
        window = [e for e in relevant if at - rule.window_us < e.ts <= at]
        if rule.kind == "points":
            points = sum(self.weights.get(e.event_type, 0.0) for e in window)
            assert rule.threshold is not None
            return {"points": points, "events": len(window)} if points > rule.threshold else None
        if rule.kind == "repeat_without":
            if any(e.event_type in rule.cancel_event_types for e in window):
                return None
            counts: dict[str, int] = {}
            for e in window:
                if e.event_type in rule.event_types and e.category is not None:
                    counts[e.category] = counts.get(e.category, 0) + 1
            assert rule.threshold is not None
            hits = sorted((-n, category) for category, n in counts.items() if n >= rule.threshold)
            return {"product_category": hits[0][1], "events": -hits[0][0]} if hits else None
        # return
        if stage != rule.lifecycle_stage or not window:
            return None
        return {"lifecycle_stage": stage, "last_event_at": iso(max(e.ts for e in window))}

    def advance(
        self, user_id: str, state: UserState, new: list[Event], until: int, stage: str | None = None
    ) -> list[Transition]:
        """Add the user's new events (each later than state.done_to) and evaluate every change point up to `until`.

        Args:
            user_id: whose state it is.
            state: updated in place: events added and pruned, memberships, done_to = until.
            new: events with done_to < ts <= until (the caller checks lateness and duplicates).
            until: the watermark.
            stage: the lifecycle stage of the user's published profile (for `return` rules).

        Returns:
            The transitions, in time order (rules in file order at the same time).
        """
        for event in new:
            bisect.insort(state.events, event, key=lambda e: e.key)
        out: list[Transition] = []
        for name in [n for n in state.active if n not in self._reads]:  # a rule disabled or removed since
            since, _ = state.active.pop(name)
            out.append(
                Transition(name, user_id, "exited", until, {"reason": "rule disabled", "entered_at": iso(since)})
            )
        start = state.done_to if state.done_to is not None else min((e.ts for e in new), default=until) - 1
        # Each rule's events, filtered once for every change point (they stay in time order).
        relevant = {rule.name: self._relevant(rule, state.events) for rule in self.rules}
        points = sorted(
            {p for rule in self.rules for p in self.change_points(rule, relevant[rule.name]) if start < p <= until}
        )
        for at in points:
            for rule in self.rules:
                events = relevant[rule.name]
                upto = events[: bisect.bisect_right(events, at, key=lambda e: e.ts)]
                evidence = self.member(rule, upto, at, stage)
                was = rule.name in state.active
                if evidence is not None and not was:
                    state.active[rule.name] = (at, evidence)
                    out.append(Transition(rule.name, user_id, "entered", at, evidence))
                elif evidence is None and was:
                    since, _ = state.active.pop(rule.name)
                    out.append(Transition(rule.name, user_id, "exited", at, self._why(rule, upto, at, since)))
        state.done_to = until
        self._prune(state, until)
        return out

    def _why(self, rule: TriggerRule, events: list[Event], at: int, since: int) -> dict:
        cancel = [e.event_type for e in events if e.ts == at and e.event_type in rule.cancel_event_types]
        reason = f"cancelled by {cancel[0]}" if cancel else "window elapsed"
        return {"reason": reason, "entered_at": iso(since)}

    def _needed(self, rule: TriggerRule, e: Event, until: int, last_cancel: dict[str, int]) -> bool:
        if rule.kind == "return" or not self._reads_type(rule, e) or e.ts <= until - rule.lookback_us:
            return False
        if rule.kind == "absence":
            # Past cancelling events only rule out the starts before them; those starts can never count again.
            # The latest cancelling event is kept: a start before it may still be held for another rule.
            cancelled = last_cancel.get(rule.name)
            if e.event_type in rule.cancel_event_types and e.ts == cancelled:
                return True
            return e.event_type in rule.event_types and (cancelled is None or e.ts >= cancelled)
        return True

    def _prune(self, state: UserState, until: int) -> None:
        """Drop events no rule reads any more (the latest is kept: `return` rules read the last event), then keep
        at most MAX_EVENTS_PER_USER (the newest): a bot's endless events must not make every round slower."""
        if not state.events:
            return
        latest = state.events[-1]
        last_cancel: dict[str, int] = {}
        for rule in self.rules:
            if rule.kind == "absence":
                cancels = [e.ts for e in state.events if e.event_type in rule.cancel_event_types]
                if cancels:
                    last_cancel[rule.name] = max(cancels)
        kept = [
            e for e in state.events if e is latest or any(self._needed(r, e, until, last_cancel) for r in self.rules)
        ]
        state.events = kept[-MAX_EVENTS_PER_USER:]

    def next_timer(self, state: UserState) -> int | None:
        """The first change point after done_to (when the user must be evaluated again without a new event)."""
        if state.done_to is None:
            return None
        later = [
            p
            for rule in self.rules
            for p in self.change_points(rule, self._relevant(rule, state.events))
            if p > state.done_to
        ]
        return min(later, default=None)
