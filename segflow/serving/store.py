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
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from segflow.serving import snapshot


class VersionView(Protocol):
    version: str

    def meta(self) -> dict[str, str]: ...

    def profile(self, user_id: str) -> dict | None: ...

    def profile_json(self, user_id: str) -> str | None:
        """The profile document as stored (JSON text): served without parsing it again."""
        ...

    def profiles_json(self, user_ids: list[str]) -> list[str | None]:
        """profile_json of many users in one read."""
        ...

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
        doc = self.profile_json(user_id)
        return json.loads(doc) if doc else None

    def profile_json(self, user_id: str) -> str | None:
        row = self._con.execute("SELECT doc FROM profiles WHERE user_id = ?", (user_id,)).fetchone()
        return row[0] if row else None

    def profiles_json(self, user_ids: list[str]) -> list[str | None]:
        return [self.profile_json(user) for user in user_ids]

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
    """Reads the local snapshots. Each thread keeps one open connection to the current version's file (reopened
    when the pointer moves); the pointer file is re-read only when it was replaced (its inode and mtime)."""

    def __init__(self, snapshot_dir: Path) -> None:
        self.snapshot_dir = Path(snapshot_dir)
        self._pointer: tuple[tuple[int, int] | None, str | None] = (None, None)
        self._local = threading.local()

    def current(self) -> str | None:
        try:
            stat = os.stat(self.snapshot_dir / snapshot.POINTER)
        except FileNotFoundError:
            return None
        key = (stat.st_ino, stat.st_mtime_ns)
        cached_key, version = self._pointer
        if cached_key != key:
            version = snapshot.current_version(self.snapshot_dir)
            self._pointer = (key, version)
        return version

    def _connection(self, version: str) -> sqlite3.Connection:
        held: dict[str, sqlite3.Connection] = getattr(self._local, "connections", {})
        con = held.get(version)
        if con is None:
            con = snapshot.open_snapshot(snapshot.snapshot_file(self.snapshot_dir, version))
            con.execute("SELECT 1 FROM meta LIMIT 1")  # raises now if the file is gone
            for old in held.values():
                old.close()
            self._local.connections = {version: con}
        return con

    @contextlib.contextmanager
    def view(self) -> Iterator[_SnapshotView | None]:
        for _ in range(3):  # the pointer moved and the file went (an erasure sync) between reading and opening
            version = self.current()
            if version is None:
                break
            try:
                con = self._connection(version)
            except sqlite3.OperationalError:
                self._pointer = (None, None)
                continue
            yield _SnapshotView(version, con)
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
        doc = self.profile_json(user_id)
        return json.loads(doc) if doc else None

    def profile_json(self, user_id: str) -> str | None:
        return self._r.hget(f"{self._k}:profiles", user_id)

    def profiles_json(self, user_ids: list[str]) -> list[str | None]:
        return self._r.hmget(f"{self._k}:profiles", user_ids) if user_ids else []

    def resolve(self, key: str) -> str | None:
        return self._r.hget(f"{self._k}:ids", key)

    def segments(self) -> list[dict]:
        docs = self._r.hgetall(f"{self._k}:segments")
        return [json.loads(docs[name]) for name in sorted(docs)]

    def members(self, segment: str, after: str, limit: int) -> list[str]:
        start = f"({after}" if after else "-"
        return self._r.zrange(f"{self._k}:members:{segment}", start, "+", bylex=True, offset=0, num=limit)


class RedisStore:
    def __init__(self, url: str, prefix: str = "segflow", client: Any = None, pointer_ttl: float = 0.0) -> None:
        import redis

        self.prefix = prefix
        self.client = client or redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
        self.pointer_ttl = pointer_ttl
        self._pointer: tuple[float, str | None] = (0.0, None)

    def current(self) -> str | None:
        version = self.client.get(f"{self.prefix}:current")
        return None if version is None else str(version)

    def _current_cached(self) -> str | None:
        """The pointer, re-read at most every `pointer_ttl` seconds: a request still answers from one whole version
        (the one it read), and a replaced version stays readable for the grace period, far longer than this."""
        now = time.monotonic()
        read_at, version = self._pointer
        if version is None or now - read_at >= self.pointer_ttl:
            version = self.current()
            self._pointer = (now, version)
        return version

    @contextlib.contextmanager
    def view(self) -> Iterator[_RedisView | None]:
        version = self._current_cached()
        yield _RedisView(self.client, self.prefix, version) if version else None

    def _send(self, commands: Iterable[tuple]) -> None:
        """Pipelined commands packed in C by hiredis, 20 per round trip: redis-py's own packing encodes every
        argument in Python, which was most of a million profiles' load time."""
        import hiredis

        connection = self.client.connection_pool.get_connection()
        try:
            batch: list[bytes] = []
            for command in commands:
                batch.append(hiredis.pack_command(command))
                if len(batch) == 20:
                    self._flush(connection, batch)
                    batch = []
            self._flush(connection, batch)
        except BaseException:
            connection.disconnect()  # replies of the failed batch may be unread: never reuse the connection
            raise
        finally:
            self.client.connection_pool.release(connection)

    @staticmethod
    def _flush(connection, batch: list[bytes]) -> None:
        if not batch:
            return
        connection.send_packed_command(batch)
        for _ in batch:
            reply = connection.read_response()
            if isinstance(reply, Exception):
                raise reply

    def load(self, snapshot_file: Path, version: str, grace_seconds: int, chunk: int = 5000) -> dict[str, int]:
        """Load one snapshot file as `version`, then make it current and let the replaced version expire.

        Returns counts of what was loaded. A failure before the switch leaves the current version as it was;
        the half-loaded keys are removed (and would expire with the next sync anyway).
        """
        base = f"{self.prefix}:v:{version}"
        keys = [f"{base}:meta", f"{base}:profiles", f"{base}:ids", f"{base}:segments"]
        con = snapshot.open_snapshot(snapshot_file)
        counts = {"profiles": 0, "identifiers": 0, "segments": 0, "members": 0}

        def hashes(table: str, key: str, count: str) -> Iterator[tuple]:
            rows = con.execute(f"SELECT * FROM {table}")
            while batch := rows.fetchmany(chunk):
                counts[count] += len(batch)
                yield ("HSET", f"{base}:{key}", *itertools.chain.from_iterable(batch))

        def members() -> Iterator[tuple]:
            rows = con.execute("SELECT segment, user_id FROM members ORDER BY segment, user_id")
            while batch := rows.fetchmany(chunk):
                counts["members"] += len(batch)
                for segment, group in itertools.groupby(batch, key=lambda row: row[0]):
                    yield (
                        "ZADD",
                        f"{base}:members:{segment}",
                        *itertools.chain.from_iterable((0, u) for _, u in group),
                    )

        try:
            # Registered first, with every key it will write: the keys of a sync killed midway are found and
            # deleted by the next one.
            segments = con.execute("SELECT name, doc FROM segments").fetchall()
            keys += [f"{base}:members:{name}" for name, _ in segments]
            self.client.sadd(f"{self.prefix}:versions", version)
            self.client.delete(*keys, f"{base}:keys")  # a retried sync of the same version starts clean
            self.client.sadd(f"{base}:keys", *keys)
            meta = con.execute("SELECT key, value FROM meta").fetchall()
            self._send([("HSET", f"{base}:meta", *itertools.chain.from_iterable(meta))])
            self._send(hashes("profiles", "profiles", "profiles"))
            self._send(hashes("identifiers", "ids", "identifiers"))
            if segments:
                self._send([("HSET", f"{base}:segments", *itertools.chain.from_iterable(segments))])
            counts["segments"] = len(segments)
            self._send(members())
        except Exception:
            with contextlib.suppress(Exception):
                self.client.delete(*keys, f"{base}:keys")
                self.client.srem(f"{self.prefix}:versions", version)
            raise
        finally:
            con.close()
        previous = self.current()
        self.client.set(f"{self.prefix}:current", version)  # the switch: one SET
        self._expire_others(version, previous, grace_seconds)
        return counts

    def built_at(self) -> str | None:
        """When the current version's snapshot was built (its meta), or None."""
        version = self.current()
        built = self.client.hget(f"{self.prefix}:v:{version}:meta", "built_at") if version else None
        return None if built is None else str(built)

    def _expire_others(self, current: str, previous: str | None, grace_seconds: int) -> None:
        """The replaced version expires after the grace period; older leftovers (failed or killed syncs) at once.
        Versions newer than `current` are another sync's, still loading: left alone. With no grace (an erasure),
        every other version goes now, also replaced ones still within their grace period."""
        for version in map(str, self.client.smembers(f"{self.prefix}:versions")):
            if version == current or version > current:
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
        if grace_seconds == 0:
            keep = f"{self.prefix}:v:{current}:"
            stale = [
                key
                for key in self.client.scan_iter(f"{self.prefix}:v:*", count=1000)
                if not key.startswith(keep) and key[len(f"{self.prefix}:v:") :].split(":", 1)[0] < current
            ]
            for start in range(0, len(stale), 1000):
                self.client.delete(*stale[start : start + 1000])


def drop_prefix(client, prefix: str) -> int:
    """Delete every key under `<prefix>:` (a bench's or a test's keys); returns how many."""
    keys = list(client.scan_iter(f"{prefix}:*", count=10_000))
    for start in range(0, len(keys), 10_000):
        client.delete(*keys[start : start + 10_000])
    return len(keys)


def open_store(settings) -> ServingStore:
    """The store `segflow serve` reads: Redis when `serving.url` is set, else the local snapshot."""
    url = settings.get("serving", "url")
    if url:
        # The API server re-reads the pointer at most twice a second (a lookup is then one round trip).
        return RedisStore(url, settings.get("serving", "key_prefix"), pointer_ttl=0.5)
    return SnapshotStore(Path(settings.get("serving", "snapshot_dir")))
