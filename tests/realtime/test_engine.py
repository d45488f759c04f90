"""Event-time windowing of the trigger rules: exact entry and exit times, order independence, the rules file."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from segflow.realtime.engine import Evaluator, Event, UserState, iso, to_us
from segflow.realtime.rules import RuleError, intent_weights, load_rules, parse_rules

M = 60_000_000  # a minute in microseconds
T0 = to_us(datetime(2026, 9, 30, 10, 0, tzinfo=UTC))


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator(load_rules(), intent_weights())


def ev(minute: float, event_type: str, category: str | None = None, event_id: str | None = None) -> Event:
    return Event(T0 + int(minute * M), event_type, category, event_id or f"e{minute}-{event_type}-{category}")


def run(evaluator, events, until_minute, stage=None, rule=None):
    state = UserState()
    out = evaluator.advance("u1", state, events, T0 + int(until_minute * M), stage)
    return [(t.rule, t.change, (t.at - T0) / M) for t in out if rule is None or t.rule == rule], state


def test_cart_abandoned_after_30_minutes_without_checkout_and_left_on_purchase(evaluator):
    out, _ = run(evaluator, [ev(0, "add_to_cart", "shoes"), ev(45, "purchase")], 120, rule="cart_abandoned")
    assert out == [("cart_abandoned", "entered", 30.0), ("cart_abandoned", "exited", 45.0)]
    # A checkout within the 30 minutes: never abandoned.
    out, _ = run(evaluator, [ev(0, "add_to_cart"), ev(29.99, "begin_checkout")], 120, rule="cart_abandoned")
    assert out == []
    # Left alone: a member for the active period (1440 minutes) after the 30.
    out, _ = run(evaluator, [ev(0, "add_to_cart", "shoes")], 2000, rule="cart_abandoned")
    assert out == [("cart_abandoned", "entered", 30.0), ("cart_abandoned", "exited", 1470.0)]


def test_high_intent_now_crosses_7_points_in_a_sliding_30_minutes(evaluator):
    # add_to_cart 3 + begin_checkout 4 = 7: not above 7; one product_view (1) more makes 8.
    events = [ev(0, "add_to_cart"), ev(10, "begin_checkout"), ev(29, "product_view", "shoes")]
    out, state = run(evaluator, events, 100, rule="high_intent_now")
    assert out == [("high_intent_now", "entered", 29.0), ("high_intent_now", "exited", 30.0)]
    out, _ = run(evaluator, events[:2], 100, rule="high_intent_now")
    assert out == []


def test_browse_abandoned_needs_three_views_of_one_category_and_no_add_to_cart(evaluator):
    views = [ev(0, "product_view", "garden"), ev(20, "product_view", "garden"), ev(50, "product_view", "garden")]
    out, _ = run(evaluator, views, 200, rule="browse_abandoned")
    assert out == [("browse_abandoned", "entered", 50.0), ("browse_abandoned", "exited", 60.0)]
    mixed = [ev(0, "product_view", "garden"), ev(20, "product_view", "toys"), ev(50, "product_view", "garden")]
    assert run(evaluator, mixed, 200, rule="browse_abandoned")[0] == []
    carted = [*views, ev(55, "add_to_cart", "garden")]
    out, _ = run(evaluator, carted, 200, rule="browse_abandoned")
    assert out == [("browse_abandoned", "entered", 50.0), ("browse_abandoned", "exited", 55.0)]


def test_lapsed_returning_only_for_users_the_profile_marks_lapsed(evaluator):
    events = [ev(0, "page_view"), ev(100, "page_view")]
    out, _ = run(evaluator, events, 3000, stage="lapsed", rule="lapsed_returning")
    assert out == [("lapsed_returning", "entered", 0.0), ("lapsed_returning", "exited", 1540.0)]
    assert run(evaluator, events, 3000, stage="active", rule="lapsed_returning")[0] == []


def test_arrival_order_and_batching_do_not_change_the_transitions(evaluator):
    """Events shuffled (as they arrive out of order within the allowed lateness) and evaluated in several steps
    give the transitions of one pass over the sorted events."""
    rng = random.Random(7)
    kinds = ["product_view", "add_to_cart", "begin_checkout", "purchase", "search", "wishlist_add", "page_view"]
    events = [
        Event(T0 + rng.randrange(0, 600 * M), kind, rng.choice(["a", "b", None]), f"id{i}")
        for i, kind in enumerate(rng.choices(kinds, weights=[12, 1, 1, 1, 1, 1, 2], k=120))
    ]
    whole, _ = run(evaluator, events, 3000, stage="lapsed")
    assert {r for r, _, _ in whole} == {"cart_abandoned", "high_intent_now", "browse_abandoned", "lapsed_returning"}
    lateness = 2 * M
    arrivals = sorted(events, key=lambda e: e.ts + rng.randrange(0, lateness))  # each at most 2 minutes late
    state, stepped, held = UserState(), [], []
    for i, event in enumerate(arrivals):
        held.append(event)
        if i % 7 == 6:
            watermark = max(e.ts for e in arrivals[: i + 1]) - lateness
            ready = [e for e in held if e.ts <= watermark]
            held = [e for e in held if e.ts > watermark]
            stepped += evaluator.advance("u1", state, ready, watermark, "lapsed")
    stepped += evaluator.advance("u1", state, held, T0 + 3000 * M, "lapsed")
    assert [(t.rule, t.change, (t.at - T0) / M) for t in stepped] == whole


def test_state_round_trips_and_keeps_only_what_rules_read(evaluator):
    _, state = run(evaluator, [ev(0, "add_to_cart", "shoes"), ev(1, "page_view"), ev(2, "page_view")], 5)
    copy = UserState.loads(state.dumps())
    assert copy == state
    # page views are read only by the `return` rule, which needs the latest event alone.
    assert [e.event_type for e in state.events] == ["add_to_cart", "page_view"]
    assert iso(evaluator.next_timer(state)) == "2026-09-30T10:30:00Z"  # the cart's 30 minutes


def test_rules_file_problems_name_line_and_column():
    good = {
        "trigger_name": "x",
        "kind": "points",
        "enabled": "true",
        "window_minutes": "30",
        "threshold": "7",
        "event_types": "",
        "cancel_event_types": "",
        "active_minutes": "",
        "lifecycle_stage": "",
        "description": "",
    }
    assert parse_rules([good], "rules.csv")[0].threshold == 7
    for change, message in [
        ({"kind": "sometimes"}, "line 2, column kind: expected one of"),
        ({"window_minutes": "-5"}, "column window_minutes: expected a positive whole number"),
        ({"threshold": "nan"}, "column threshold: expected a finite number"),
        ({"kind": "absence", "event_types": "add_to_cart", "active_minutes": "60"}, "column cancel_event_types"),
        ({"trigger_name": "drop table"}, "column trigger_name"),
    ]:
        with pytest.raises(RuleError, match=message):
            parse_rules([{**good, **change}], "rules.csv")
    with pytest.raises(RuleError, match="line 3, column trigger_name: 'x' is defined twice"):
        parse_rules([good, good], "rules.csv")
