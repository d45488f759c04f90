"""Errors raised by the extract step."""


class ExtractError(RuntimeError):
    """A structural problem with a source (missing required column, unreadable, empty, truncated or wrongly
    encoded file, unreachable system): the source's batch is refused and nothing of it is loaded."""
