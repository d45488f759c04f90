"""The events contract applied to one stream message: the batch extract's row checks, with its reasons.

A stream entry's fields are the canonical event columns (segflow.extract.contracts.EVENTS). The checks and their
wording are the batch extract's (segflow.extract.loader._checks, readers.MAX_FIELD_CHARS), so an event refused by
the stream is refused for the same reason as in a file: tests/realtime/test_contract.py runs both on the same rows.
"""

from __future__ import annotations

from datetime import UTC, datetime

from segflow.extract.contracts import EVENTS
from segflow.extract.readers import MAX_FIELD_CHARS

_NON_FINITE = {"infinity", "+infinity", "-infinity", "inf", "+inf", "-inf"}


class Rejected(ValueError):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"{column}: {reason}")
        self.column = column
        self.reason = reason


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 timestamp, offsets honoured, as an aware UTC datetime (naive text is UTC, as in the batch)."""
    moment = datetime.fromisoformat(text.replace(" ", "T", 1) if len(text) > 10 and text[10] == " " else text)
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def check_event(fields: dict[str, str]) -> dict[str, str | datetime | None]:
    """The canonical event of a stream entry, or Rejected naming the column and the batch extract's reason.

    Args:
        fields: the entry's fields (text); unknown fields are ignored, as unmapped file columns are.

    Returns:
        {column: trimmed text or None, ..., "event_ts": aware UTC datetime}.
    """
    for name, value in fields.items():
        if len(value) > MAX_FIELD_CHARS:
            raise Rejected(
                name[:100], f"field of {len(value):,} characters exceeds the {MAX_FIELD_CHARS:,}-character limit"
            )
    record: dict[str, str | datetime | None] = {}
    for column in EVENTS.columns:
        raw = fields.get(column.name)
        value = raw.strip() if raw is not None else ""
        if column.required and not value:
            raise Rejected(column.name, "missing required value")
        if raw is not None and "\x00" in raw:
            raise Rejected(column.name, "contains a NUL character")
        record[column.name] = value or None
    text = str(record["event_ts"])
    if text.lower() in _NON_FINITE:
        raise Rejected("event_ts", "not a finite date or time")
    try:
        record["event_ts"] = parse_timestamp(text)
    except ValueError:
        raise Rejected("event_ts", f"cannot parse '{text[:100]}' as timestamp") from None
    return record
