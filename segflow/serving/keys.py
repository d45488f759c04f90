"""API keys of the segment API: created by `segflow api-key create`, stored hashed with their scopes.

A key reads `sf_<key id>_<secret>`. Only the SHA-256 of the whole key is stored (the key is 32 random bytes, so a
fast hash is enough: there is nothing to brute-force), looked up by its id and compared in constant time. The file
is SQLite so every server process and the CLI share it; servers on several machines share it on a volume or copy it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCOPES = ("read:profiles", "read:segments")
PREFIX = "sf"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    rate_limit_per_minute INTEGER,
    created_at TEXT NOT NULL,
    revoked_at TEXT
)
"""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: frozenset[str]
    rate_limit_per_minute: int | None
    created_at: str
    revoked_at: str | None = None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)  # hashes only, but nobody else's business
    path.chmod(0o600)
    con = sqlite3.connect(path, timeout=10)
    con.execute(_SCHEMA)
    return con


def create_key(
    path: Path, scopes: Iterable[str], name: str = "", rate_limit_per_minute: int | None = None
) -> tuple[str, ApiKey]:
    """Create a key. Returns the key in clear (shown once, never stored) and its record.

    Args:
        path: the keys file (`serving.keys_file`).
        scopes: some of SCOPES.
        name: who or what the key is for.
        rate_limit_per_minute: this key's own limit (default: `serving.rate_limit_per_minute`).
    """
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if not wanted or unknown:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}")
    if rate_limit_per_minute is not None and rate_limit_per_minute <= 0:
        raise ValueError("rate_limit_per_minute must be positive")
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(key_id, name, frozenset(wanted), rate_limit_per_minute, datetime.now(UTC).isoformat())
    with _connect(path) as con:
        con.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (key_id, _digest(key), name, " ".join(wanted), rate_limit_per_minute, record.created_at),
        )
    con.close()
    return key, record


def _record(row: tuple) -> ApiKey:
    key_id, _, name, scopes, limit, created, revoked = row
    return ApiKey(key_id, name, frozenset(scopes.split()), limit, created, revoked)


def list_keys(path: Path) -> list[ApiKey]:
    if not path.exists():
        return []
    con = _connect(path)
    try:
        return [_record(r) for r in con.execute("SELECT * FROM api_keys ORDER BY created_at")]
    finally:
        con.close()


def revoke_key(path: Path, key_id: str) -> bool:
    """Revoke a key by its id; False when no active key has it."""
    if not path.exists():
        return False
    with _connect(path) as con:
        changed = con.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (datetime.now(UTC).isoformat(), key_id),
        ).rowcount
    con.close()
    return bool(changed)


def verify_key(path: Path, key: str) -> ApiKey | None:
    """The active key record of `key`, or None (unknown, malformed, revoked)."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not path.exists():
        return None
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute("SELECT * FROM api_keys WHERE key_id = ?", (parts[1],)).fetchone()
    except sqlite3.OperationalError:  # an empty file: no key was ever created
        return None
    finally:
        con.close()
    if row is None or not hmac.compare_digest(row[1], _digest(key)):
        return None
    record = _record(row)
    return None if record.revoked_at else record
