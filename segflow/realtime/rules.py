"""Real-time trigger rules: the analyst-editable seed `dbt_project/seeds/trigger_rules.csv`, read and checked.

The same seed drives the stream consumer (segflow.realtime.engine) and the dbt model that evaluates the rules over a
day of events in batch (models/triggers/trigger_transitions.sql), so both follow one definition. A rule has a `kind`,
which fixes what its parameters mean; membership is a function of event time (docs/realtime.md):

- `points`: the sum of the behaviour points (dbt var `intent_weights`, seed 002) of the user's events in the
  sliding window (T - window, T] is above `threshold`.
- `repeat_without`: within the sliding window, at least `threshold` events of `event_types` in one product category
  and none of `cancel_event_types`.
- `absence`: an event of `event_types` at time a with none of `cancel_event_types` since; a member from
  a + window until a cancelling event or a + window + active_minutes.
- `return`: the published profile's lifecycle stage is `lifecycle_stage` and the user had an event in the sliding
  window (so a member from their first event back until `window` after their last).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from segflow.core.config import REPO_ROOT

RULES_FILE = REPO_ROOT / "dbt_project" / "seeds" / "trigger_rules.csv"
DBT_PROJECT_FILE = REPO_ROOT / "dbt_project" / "dbt_project.yml"
KINDS = ("points", "repeat_without", "absence", "return")
COLUMNS = (
    "trigger_name",
    "kind",
    "enabled",
    "window_minutes",
    "threshold",
    "event_types",
    "cancel_event_types",
    "active_minutes",
    "lifecycle_stage",
    "description",
)
MICROS_PER_MINUTE = 60_000_000
EVENT_TYPE = re.compile(r"[a-z0-9_]+")  # as staging lower-cases them


class RuleError(ValueError):
    """The trigger rules cannot be used; the message names the file, line and column."""


@dataclass(frozen=True)
class TriggerRule:
    name: str
    kind: str
    window_minutes: int
    threshold: float | None = None
    event_types: tuple[str, ...] = ()
    cancel_event_types: tuple[str, ...] = ()
    active_minutes: int | None = None
    lifecycle_stage: str | None = None
    description: str = ""

    @property
    def window_us(self) -> int:
        return self.window_minutes * MICROS_PER_MINUTE

    @property
    def active_us(self) -> int:
        return (self.active_minutes or 0) * MICROS_PER_MINUTE

    @property
    def lookback_us(self) -> int:
        """How far back from a time T the rule reads events to decide membership at T."""
        return self.window_us + (self.active_us if self.kind == "absence" else 0)


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split("|") if v.strip())


def parse_rules(rows: list[dict[str, str]], origin: str = str(RULES_FILE)) -> list[TriggerRule]:
    """The enabled rules of the seed's rows, checked.

    Args:
        rows: the CSV rows (column name to text).
        origin: the file named in errors.

    Returns:
        The enabled rules in file order; raises RuleError naming the line and column of the first problem.
    """
    rules: list[TriggerRule] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):

        def fail(column: str, problem: str, line: int = line) -> RuleError:
            return RuleError(f"{origin}: line {line}, column {column}: {problem}")

        def whole(column: str, required: bool, row: dict[str, str] = row) -> int | None:
            text = (row.get(column) or "").strip()
            if not text:
                if required:
                    raise fail(column, "required for this kind of rule")
                return None
            if not text.isdigit() or int(text) <= 0:
                raise fail(column, f"expected a positive whole number of minutes, got {text[:40]!r}")
            return int(text)

        name = (row.get("trigger_name") or "").strip()
        kind = (row.get("kind") or "").strip()
        if not name or not name.replace("_", "").isalnum() or not name[0].isalpha():
            raise fail("trigger_name", f"expected a name of letters, digits and _, got {name[:40]!r}")
        if name in seen:
            raise fail("trigger_name", f"{name!r} is defined twice")
        seen.add(name)
        if kind not in KINDS:
            raise fail("kind", f"expected one of {', '.join(KINDS)}, got {kind[:40]!r}")
        enabled = (row.get("enabled") or "").strip().lower()
        if enabled not in ("true", "false"):
            raise fail("enabled", f"expected true or false, got {enabled[:40]!r}")
        window = whole("window_minutes", True)
        active = whole("active_minutes", kind == "absence")
        threshold_text = (row.get("threshold") or "").strip()
        threshold = None
        if kind in ("points", "repeat_without"):
            try:
                threshold = float(threshold_text)
            except ValueError:
                raise fail("threshold", f"expected a number, got {threshold_text[:40]!r}") from None
            if not threshold >= 0 or threshold == float("inf"):
                raise fail("threshold", f"expected a finite number >= 0, got {threshold_text[:40]!r}")
            if kind == "repeat_without" and threshold < 1:
                raise fail("threshold", "a repeat_without rule needs at least 1 event")
        events, cancels = _split(row.get("event_types") or ""), _split(row.get("cancel_event_types") or "")
        for column, types in (("event_types", events), ("cancel_event_types", cancels)):
            bad = [t for t in types if not EVENT_TYPE.fullmatch(t)]
            if bad:
                raise fail(column, f"event types are lower-case letters, digits and _, got {bad[0][:40]!r}")
        if kind in ("repeat_without", "absence") and not events:
            raise fail("event_types", "required for this kind of rule (event types separated by |)")
        if kind == "absence" and not cancels:
            raise fail("cancel_event_types", "required for this kind of rule (event types separated by |)")
        stage = (row.get("lifecycle_stage") or "").strip() or None
        if kind == "return" and not stage:
            raise fail("lifecycle_stage", "required for this kind of rule")
        if enabled == "true":
            assert window is not None
            rules.append(
                TriggerRule(
                    name,
                    kind,
                    window,
                    threshold,
                    events,
                    cancels,
                    active,
                    stage,
                    (row.get("description") or "").strip(),
                )
            )
    return rules


def load_rules(path: Path = RULES_FILE) -> list[TriggerRule]:
    """The enabled trigger rules of the seed file (see parse_rules)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise RuleError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
        return parse_rules(list(reader), str(path))


def intent_weights(path: Path = DBT_PROJECT_FILE) -> dict[str, float]:
    """Behaviour points per event type: the dbt var `intent_weights` (seed 002), as the batch features use them.
    `cart_abandonment` is a per-session weight of the batch score, not an event type, and is left out."""
    weights = (yaml.safe_load(path.read_text(encoding="utf-8")).get("vars") or {}).get("intent_weights") or {}
    return {str(k): float(v) for k, v in weights.items() if k != "cart_abandonment"}
