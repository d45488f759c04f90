"""Column mapping: how a source's own columns become the canonical columns of its dataset, without code.

Configured per source in segflow.yml (see docs/extracts.md):

    mapping:
      rename:    {InvoiceNo: order_id, InvoiceDate: order_ts}     # source column -> canonical column
      constants: {currency: GBP}                                    # canonical column -> fixed value
      derive:                                                       # canonical column -> rule on source columns
        amount:    {multiply: [Quantity, UnitPrice]}
        customer_ref: {integer: CustomerID}                         # 17850.0 -> 17850
        status:    {prefix: {column: InvoiceNo, values: {C: cancelled}, default: completed}}
        line_type: {lookup: {column: StockCode, values: {POST: fee}, default: product}}
        line_id:   {concat: [StockCode, Quantity, UnitPrice]}
        item_count: {column: Quantity}
      values:    {status: {paid: completed, canceled: cancelled}}  # source value -> canonical (case-insensitive)
      formats:   {order_ts: "%d/%m/%Y %H:%M"}                      # strptime format(s) for timestamps/dates
      timezone:  Europe/London                                      # zone of timestamps without an offset (UTC)
      decimal:   ","                                                # decimal separator of numbers (".")

Source column names match case- and whitespace-insensitively. Unmapped canonical columns are taken from a
source column of the same name; optional ones that are absent become NULL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from segflow.core.config import MAPPING_KEYS
from segflow.extract.contracts import Column, Dataset
from segflow.extract.errors import ExtractError

DERIVE_RULES = ("column", "multiply", "concat", "integer", "prefix", "lookup")
# A timestamp with an explicit offset (Z, +02, +0200, +02:00) after its time part.
OFFSET_PATTERN = r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)$"


def quote_ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def quote_literal(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def normalise_name(name: str) -> str:
    return str(name).strip().lower()


@dataclass(frozen=True)
class Mapping:
    rename: dict[str, str] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    derive: dict[str, dict] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    formats: dict[str, list[str]] = field(default_factory=dict)
    timezone: str | None = None
    decimal: str = "."

    @classmethod
    def from_config(cls, cfg: dict | None, dataset: Dataset, where: str) -> Mapping:
        """Validate a source's `mapping` section; errors name the source and the offending key."""
        cfg = cfg or {}
        unknown = set(cfg) - MAPPING_KEYS
        if unknown:
            raise ValueError(f"{where}.mapping: unknown key(s) {sorted(unknown)}; allowed: {sorted(MAPPING_KEYS)}")
        canonical = set(dataset.names)

        def check_targets(section: str, names) -> None:
            bad = [n for n in names if n not in canonical]
            if bad:
                raise ValueError(
                    f"{where}.mapping.{section}: {bad} are not columns of the {dataset.name} dataset "
                    f"({', '.join(dataset.names)})"
                )

        rename = {str(k): str(v) for k, v in (cfg.get("rename") or {}).items()}
        check_targets("rename", rename.values())
        constants = dict(cfg.get("constants") or {})
        check_targets("constants", constants)
        derive = dict(cfg.get("derive") or {})
        check_targets("derive", derive)
        for target, rule in derive.items():
            if not isinstance(rule, dict) or len(rule) != 1 or next(iter(rule)) not in DERIVE_RULES:
                raise ValueError(
                    f"{where}.mapping.derive.{target}: expected one of {DERIVE_RULES} as the only key, got {rule!r}"
                )
        values = {k: {str(a): str(b) for a, b in (v or {}).items()} for k, v in (cfg.get("values") or {}).items()}
        check_targets("values", values)
        formats = {k: ([v] if isinstance(v, str) else list(v)) for k, v in (cfg.get("formats") or {}).items()}
        check_targets("formats", formats)
        decimal = str(cfg.get("decimal", "."))
        if decimal not in (".", ","):
            raise ValueError(f"{where}.mapping.decimal must be '.' or ','")
        return cls(rename, constants, derive, values, formats, cfg.get("timezone"), decimal)

    def plan(self, dataset: Dataset, present: list[str], origin: str) -> MappingPlan:
        return MappingPlan(self, dataset, present, origin)


def _describe_rule(rule: str, arg: Any) -> str:
    if rule in ("prefix", "lookup"):
        return str(arg["column"])
    if rule == "multiply":
        return " x ".join(map(str, arg))
    if rule == "concat":
        return " | ".join(map(str, arg))
    return str(arg)


class MappingPlan:
    """The mapping applied to one batch whose source columns are `present` (all VARCHAR)."""

    def __init__(self, mapping: Mapping, dataset: Dataset, present: list[str], origin: str):
        self.mapping, self.dataset, self.origin = mapping, dataset, origin
        self.by_name: dict[str, str] = {}
        for name in present:
            self.by_name.setdefault(normalise_name(name), name)
        self.renamed_to = {target: src for src, target in mapping.rename.items()}
        self.sources: dict[str, str | None] = {}  # canonical column -> what it comes from (for messages)
        self.derived: set[str] = set()
        self.exprs: dict[str, str] = {}
        missing = []
        for col in dataset.columns:
            expr, source = self._expr(col)
            if expr is None and col.required:
                missing.append(col.name if source is None else f"{col.name} (mapped from {source})")
            if col.name in mapping.values and expr is not None:
                cases = " ".join(
                    f"WHEN {quote_literal(k.strip().lower())} THEN {quote_literal(v)}"
                    for k, v in mapping.values[col.name].items()
                )
                expr = f"CASE lower(trim({expr})) {cases} ELSE {expr} END"
            self.exprs[col.name] = expr if expr is not None else "NULL::VARCHAR"
            self.sources[col.name] = source
        if missing:
            raise ExtractError(
                f"{origin}: missing required column(s) {', '.join(missing)}; "
                f"columns present: {', '.join(present) or '(none)'}"
            )
        used = {normalise_name(s) for s in self._referenced()}
        self.ignored = [name for name in present if normalise_name(name) not in used]

    def _src(self, name: str) -> str | None:
        return self.by_name.get(normalise_name(name))

    def _need(self, name: str, target: str) -> str:
        actual = self._src(name)
        if actual is None:
            raise ExtractError(f"{self.origin}: column '{name}' (used to derive {target}) is missing")
        return quote_ident(actual)

    def _expr(self, col: Column) -> tuple[str | None, str | None]:
        m = self.mapping
        if col.name in m.derive:
            ((rule, arg),) = m.derive[col.name].items()
            self.derived.add(col.name)
            return self._derive(col.name, rule, arg), _describe_rule(rule, arg)
        if col.name in m.constants:
            return quote_literal(m.constants[col.name]), "constant"
        if col.name in self.renamed_to:
            source = self.renamed_to[col.name]
            actual = self._src(source)
            return (quote_ident(actual) if actual else None), source
        actual = self._src(col.name)
        return (quote_ident(actual) if actual else None), (actual if actual and actual != col.name else None)

    def _derive(self, target: str, rule: str, arg: Any) -> str:
        if rule == "column":
            return self._need(arg, target)
        if rule == "multiply":
            factors = [f"TRY_CAST({self._num(self._need(a, target))} AS DOUBLE)" for a in arg]
            return f"CAST(round({' * '.join(factors)}, 6) AS VARCHAR)"
        if rule == "concat":
            parts = [f"coalesce({self._need(a, target)}, '')" for a in arg]
            return f"concat_ws('|', {', '.join(parts)})"
        if rule == "integer":
            col = self._need(arg, target)
            # Identifiers exported as floats (17850.0) keep their integer spelling; anything else stays as is.
            return (
                f"CASE WHEN regexp_full_match(trim({col}), '-?\\d+\\.0*') THEN regexp_replace(trim({col}), '\\.0*$', '') "
                f"ELSE {col} END"
            )
        if rule in ("prefix", "lookup"):
            col = self._need(arg["column"], target)
            default = quote_literal(arg["default"]) if arg.get("default") is not None else col
            values = sorted((arg.get("values") or {}).items(), key=lambda kv: -len(str(kv[0])))
            if rule == "prefix":
                cases = " ".join(
                    f"WHEN starts_with(upper(trim({col})), {quote_literal(str(k).upper())}) THEN {quote_literal(v)}"
                    for k, v in values
                )
            else:
                cases = " ".join(
                    f"WHEN upper(trim({col})) = {quote_literal(str(k).upper())} THEN {quote_literal(v)}"
                    for k, v in values
                )
            return f"CASE WHEN {col} IS NULL THEN NULL {cases} ELSE {default} END" if cases else default
        raise AssertionError(rule)

    def _num(self, expr: str) -> str:
        if self.mapping.decimal == ",":
            return f"replace(replace(trim({expr}), '.', ''), ',', '.')"
        return f"trim({expr})"

    def _referenced(self) -> list[str]:
        names = [
            self.renamed_to.get(c.name, c.name)
            for c in self.dataset.columns
            if c.name not in self.mapping.derive and c.name not in self.mapping.constants
        ]
        for rule in self.mapping.derive.values():
            ((kind, arg),) = rule.items()
            if kind in ("prefix", "lookup"):
                names.append(arg["column"])
            elif isinstance(arg, list):
                names.extend(arg)
            else:
                names.append(arg)
        return names

    def select_sql(self, view: str, raw_expr: str, part: str = "0") -> str:
        """Canonical VARCHAR columns (plus _part, _row_ref and the raw record) from the batch's source columns.

        `part` is the SQL of the row's partition number in a batch of several files (a column of `view`)."""
        cols = ", ".join(
            f"CAST({self.exprs[c.name]} AS VARCHAR) AS {quote_ident(c.name)}" for c in self.dataset.columns
        )
        return f"SELECT {part} AS _part, _row_ref, {raw_expr} AS _raw, {cols} FROM {view}"

    def typed_expr(self, col: Column, ref: str | None = None) -> str:
        """SQL parsing the canonical VARCHAR column into its type; NULL when it cannot be parsed."""
        v = f"NULLIF(trim({ref or quote_ident(col.name)}), '')"
        formats = self.mapping.formats.get(col.name)
        if col.sql_type == "TIMESTAMP":
            tz = self.mapping.timezone
            if formats:
                naive = f"try_strptime({v}, [{', '.join(quote_literal(f) for f in formats)}])"
            else:
                naive = f"TRY_CAST({v} AS TIMESTAMP)"
            with_offset = f"timezone('UTC', TRY_CAST({v} AS TIMESTAMPTZ))"
            if formats:
                # A format may carry %z; strptime then returns a zoned value.
                naive = f"CAST({naive} AS TIMESTAMP)"
            local = f"timezone('UTC', timezone({quote_literal(tz)}, {naive}))" if tz else naive
            epoch = (
                f"CASE WHEN regexp_full_match({v}, '\\d{{9,10}}(\\.\\d+)?') THEN timezone('UTC', to_timestamp(TRY_CAST({v} AS DOUBLE))) "
                f"WHEN regexp_full_match({v}, '\\d{{12,13}}') THEN timezone('UTC', to_timestamp(TRY_CAST({v} AS BIGINT) / 1000.0)) END"
            )
            if not tz and not formats:
                # Naive values are UTC: one cast handles ISO with or without an offset (the session is in UTC).
                return f"coalesce({with_offset}, {epoch})"
            return f"CASE WHEN regexp_matches({v}, '{OFFSET_PATTERN}') THEN {with_offset} ELSE coalesce({local}, {epoch}) END"
        if col.sql_type == "DATE":
            if formats:
                return f"CAST(try_strptime({v}, [{', '.join(quote_literal(f) for f in formats)}]) AS DATE)"
            return f"TRY_CAST(left({v}, 10) AS DATE)"
        if col.sql_type == "BOOLEAN":
            return (
                f"CASE lower({v}) WHEN 'true' THEN true WHEN 't' THEN true WHEN '1' THEN true WHEN 'yes' THEN true "
                f"WHEN 'y' THEN true WHEN 'false' THEN false WHEN 'f' THEN false WHEN '0' THEN false WHEN 'no' THEN false "
                f"WHEN 'n' THEN false END"
            )
        if col.sql_type in ("DOUBLE", "INTEGER", "BIGINT"):
            # Derived numbers (quantity x price) are already written with a decimal point.
            value = (
                v
                if self.mapping.decimal == "." or col.name in self.derived
                else f"replace(replace({v}, '.', ''), ',', '.')"
            )
            if col.sql_type == "DOUBLE":
                return f"TRY_CAST({value} AS DOUBLE)"
            # Integers written as 2.0 are accepted; 2.5 is not an integer.
            return (
                f"CASE WHEN TRY_CAST({value} AS DOUBLE) = round(TRY_CAST({value} AS DOUBLE)) "
                f"THEN TRY_CAST(TRY_CAST({value} AS DOUBLE) AS {col.sql_type}) END"
            )
        if col.sql_type == "VARCHAR":
            return v
        return f"TRY_CAST({v} AS {col.sql_type})"

    def describe(self, column: str) -> str:
        source = self.sources.get(column)
        return f"{column} (from {source})" if source else column
