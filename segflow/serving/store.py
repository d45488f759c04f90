"""Serving stores: where `segflow serve` reads profiles and segments from.

Both stores hold versions and a pointer to the current one. A request takes one `view()` - the pointer is read
once - and answers from that version only, so readers never see a half-loaded or mixed set.

- SnapshotStore: the local read-only SQLite snapshots (segflow.serving.snapshot); no service needed.
- RedisStore: `<prefix>:v:<version>:{meta,profiles,ids,segments}` hashes and one sorted set of members per
  segment, loaded from a snapshot file; `<prefix>:current` names the current version and is set only after the
  whole version is loaded. The replaced version's keys expire after the grace period.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from segflow.serving import snapshot


class VersionView(Protocol):
    version: str

    def meta(self) -> dict[str, str]: ...

    def profile(self, user_id: str) -> dict | None: ...

    def resolve(self, key: str) -> str | None:
        """The user id of a lookup key (`<type>:<id>` or `email_sha256:<hex>`), or None."""
        ...

    def segments(self) -> list[dict]: ...

    def members(self, segment: str, after: str, limit: int) -> list[str]:
        """Up to `limit` consenting members of `segment` whose user id sorts after `after`."""
        ...


class ServingStore(Protocol):
    def current(self) -> str | None: ...

    def view(self) -> contextlib.AbstractContextManager[VersionView | None]: ...


# --- the local snapshot ----------------------------------------------------------------------------------------


class _SnapshotView:
    def __init__(self, version: str, con: sqlite3.Connection) -> None:
        self.version = version
        self._con = con

    def meta(self) -> dict[str, str]:
        return dict(self._con.execute("SELECT key, value FROM meta").fetchall())

    def profile(self, user_id: str) -> dict | None:
        row = self._con.execute("SELECT doc FROM profiles WHERE user_id = ?", (user_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def resolve(self, key: str) -> str | None:
        row = self._con.execute("SELECT user_id FROM identifiers WHERE identifier = ?", (key,)).fetchone()
        return row[0] if row else None

    def segments(self) -> list[dict]:
        return [json.loads(doc) for (doc,) in self._con.execute("SELECT doc FROM segments ORDER BY name")]

    def members(self, segment: str, after: str, limit: int) -> list[str]:
        rows = self._con.execute(
            "SELECT user_id FROM members WHERE segment = ? AND user_id > ? ORDER BY user_id LIMIT ?",
            (segment, after, limit),
        )
        return [user for (user,) in rows]


class SnapshotStore:
    def __init__(self, snapshot_dir: Path) -> None:
        self.snapshot_dir = Path(snapshot_dir)

    def current(self) -> str | None:
        return snapshot.current_version(self.snapshot_dir)

    @contextlib.contextmanager
    def view(self) -> Iterator[_SnapshotView | None]:
        for _ in range(3):  # the pointer moved and the file went (an erasure sync) between reading and opening
            version = self.current()
            if version is None:
                break
            try:
                con = snapshot.open_snapshot(snapshot.snapshot_file(self.snapshot_dir, version))
                con.execute("SELECT 1 FROM meta LIMIT 1")
            except sqlite3.OperationalError:
                continue
            try:
                yield _SnapshotView(version, con)
            finally:
                con.close()
            return
        yield None


# --- Redis -----------------------------------------------------------------------------------------------------


class _RedisView:
    def __init__(self, client, prefix: str, version: str) -> None:
        self.version = version
        self._r = client
        self._k = f"{prefix}:v:{version}"

    def meta(self) -> dict[str, str]:
        return self._r.hgetall(f"{self._k}:meta")

    def profile(self, user_id: str) -> dict | None:
        doc = self._r.hget(f"{self._k}:profiles", user_id)
        return json.loads(doc) if doc else None

    def resolve(self, key: str) -> str | None:
        return self._r.hget(f"{self._k}:ids", key)

    def segments(self) -> list[dict]:
        docs = self._r.hgetall(f"{self._k}:segments")
        return [json.loads(docs[name]) for name in sorted(docs)]

    def members(self, segment: str, after: str, limit: int) -> list[str]:
        start = f"({after}" if after else "-"
        return self._r.zrange(f"{self._k}:members:{segment}", start, "+", bylex=True, offset=0, num=limit)


class RedisStore:
    def __init__(self, url: str, prefix: str = "segflow", client: Any = None) -> None:
        import redis

        self.prefix = prefix
        self.client = client or redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)

    def current(self) -> str | None:
        version = self.client.get(f"{self.prefix}:current")
        return None if version is None else str(version)

    @contextlib.contextmanager
    def view(self) -> Iterator[_RedisView | None]:
        version = self.current()
        yield _RedisView(self.client, self.prefix, version) if version else None

    def load(self, snapshot_file: Path, version: str, grace_seconds: int, chunk: int = 5000) -> dict[str, int]:
        """Load one snapshot file as `version`, then make it current and let the replaced version expire.

        Returns counts of what was loaded. A failure before the switch leaves the current version as it was;
        the half-loaded keys are removed (and would expire with the next sync anyway).
        """
        base = f"{self.prefix}:v:{version}"
        keys = [f"{base}:meta", f"{base}:profiles", f"{base}:ids", f"{base}:segments"]
        con = snapshot.open_snapshot(snapshot_file)
        counts = {"profiles": 0, "identifiers": 0, "segments": 0, "members": 0}
        try:
            # Registered first: keys of a sync killed midway are found and deleted by the next one.
            self.client.sadd(f"{self.prefix}:versions", version)
            self.client.delete(*keys)  # a retried sync of the same version starts clean
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(f"{base}:meta", mapping=dict(con.execute("SELECT key, value FROM meta").fetchall()))
            for table, key, count in (("profiles", "profiles", "profiles"), ("identifiers", "ids", "identifiers")):
                rows = con.execute(f"SELECT * FROM {table}")
                while batch := rows.fetchmany(chunk):
                    pipe.hset(f"{base}:{key}", mapping=dict(batch))
                    counts[count] += len(batch)
                    pipe.execute()
            for name, doc in con.execute("SELECT name, doc FROM segments"):
                pipe.hset(f"{base}:segments", name, doc)
                counts["segments"] += 1
                keys.append(f"{base}:members:{name}")
                pipe.delete(keys[-1])
            pipe.execute()
            rows = con.execute("SELECT segment, user_id FROM members ORDER BY segment")
            while batch := rows.fetchmany(chunk):
                grouped: dict[str, dict[str, int]] = {}
                for segment, user in batch:
                    grouped.setdefault(segment, {})[user] = 0
                for segment, mapping in grouped.items():
                    pipe.zadd(f"{base}:members:{segment}", mapping)
                counts["members"] += len(batch)
                pipe.execute()
            pipe.sadd(f"{base}:keys", *keys)
            pipe.execute()
        except Exception:
            with contextlib.suppress(Exception):
                self.client.delete(*keys, f"{base}:keys")
            raise
        finally:
            con.close()
        previous = self.current()
        self.client.set(f"{self.prefix}:current", version)  # the switch: one SET
        self._expire_others(version, previous, grace_seconds)
        return counts

    def _expire_others(self, current: str, previous: str | None, grace_seconds: int) -> None:
        """The replaced version expires after the grace period; older leftovers (failed syncs) at once."""
        for version in map(str, self.client.smembers(f"{self.prefix}:versions")):
            if version == current:
                continue
            base = f"{self.prefix}:v:{version}"
            members = list(self.client.smembers(f"{base}:keys")) + [f"{base}:keys"]
            if version == previous and grace_seconds > 0:
                pipe = self.client.pipeline(transaction=False)
                for key in members:
                    pipe.expire(key, grace_seconds)
                pipe.execute()
            else:
                self.client.delete(*members)
            self.client.srem(f"{self.prefix}:versions", version)


def open_store(settings) -> ServingStore:
    """The store `segflow serve` reads: Redis when `serving.url` is set, else the local snapshot."""
    url = settings.get("serving", "url")
    if url:
        return RedisStore(url, settings.get("serving", "key_prefix"))
    return SnapshotStore(Path(settings.get("serving", "snapshot_dir")))
