"""HTTP JSON API sources: paginated, authenticated, retried with backoff, honouring 429 / Retry-After.

A run for as-of D requests each day's interval [day, day + 1) — D itself (re-running D replaces it) and every
day after the last loaded one (from `start_date` on an empty warehouse) — and stores one partition per day.

    sources:
      events_api:
        kind: http
        dataset: events
        conn_id: segflow_events_api          # base URL from host/port, token from the password
        url: /v1/events                      # absolute, or relative to the connection's host
        auth: {header: Authorization, scheme: Bearer}   # or token_env: MY_TOKEN (no conn_id)
        interval_params: {start: updated_since, end: updated_until}
        records_path: data                   # where the records list is in the response body
        mapping: {rename: {context.device: device}}   # nested fields are dotted column names
        pagination: {type: page, param: page, size_param: per_page, size: 500}
                    # or {type: cursor, param: cursor, next_field: meta.next_cursor}
                    # or {type: next_url, next_field: links.next}
        start_date: "2026-01-01"
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urljoin

from segflow.extract.errors import ExtractError
from segflow.extract.loader import BatchResult, LoadContext, load_batch
from segflow.extract.mapping import Mapping
from segflow.extract.readers import read_records
from segflow.extract.spec import SourceSpec

log = logging.getLogger(__name__)
RETRY_STATUSES = {429, 500, 502, 503, 504}
MAX_PAGES = 100_000  # a guard against an API that never stops paginating


def _dig(body: Any, dotted: str | None) -> Any:
    node = body
    for part in dotted.split(".") if dotted else []:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


class ApiClient:
    def __init__(self, spec: SourceSpec, sleep: Callable[[float], None] = time.sleep):
        import requests

        self.spec, self.sleep = spec, sleep
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", **(spec.get("headers", {}) or {})})
        auth = spec.get("auth", {}) or {}
        token = None
        base = None
        if spec.get("conn_id"):
            from segflow.core.connections import get_connection

            conn = get_connection(spec.options["conn_id"])
            token = conn.password
            self.session.headers.update(conn.extra.get("headers", {}) or {})
            if conn.host:
                host = (
                    conn.host
                    if "://" in conn.host
                    else f"{'https' if conn.schema == 'https' else 'http'}://{conn.host}"
                )
                base = f"{host}:{conn.port}" if conn.port else host
        if auth.get("token_env"):
            token = os.environ.get(auth["token_env"])
            if token is None:
                raise ExtractError(
                    f"source {spec.name}: environment variable {auth['token_env']} (API token) is not set"
                )
        if token:
            scheme = auth.get("scheme", "Bearer")
            self.session.headers[auth.get("header", "Authorization")] = f"{scheme} {token}".strip()
        url = spec.get("url", "")
        self.url = url if url.startswith(("http://", "https://")) else urljoin((base or "") + "/", url.lstrip("/"))
        if not self.url.startswith(("http://", "https://")):
            raise ExtractError(f"source {spec.name}: no absolute URL (set url, or conn_id with a host)")
        self.max_retries = int(spec.get("max_retries", 5))
        self.backoff = float(spec.get("backoff_seconds", 1.0))
        self.max_backoff = float(spec.get("max_backoff_seconds", 60.0))
        self.timeout = float(spec.get("timeout_seconds", 30.0))
        self.requests = 0
        self.retries = 0

    def get(self, url: str, params: dict | None) -> Any:
        import requests

        for attempt in range(self.max_retries + 1):
            self.requests += 1
            problem = None
            try:
                response = self.session.get(url, params=params, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem, wait = f"{exc.__class__.__name__}: {exc}", None
            else:
                if response.status_code < 300:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise ExtractError(f"{self.spec.name}: {response.url}: response is not JSON ({exc})") from exc
                if response.status_code not in RETRY_STATUSES:
                    hint = " (check the token in the source's connection)" if response.status_code in (401, 403) else ""
                    raise ExtractError(
                        f"{self.spec.name}: {response.url}: HTTP {response.status_code}{hint}: {response.text[:200]}"
                    )
                problem = f"HTTP {response.status_code}"
                wait = retry_after_seconds(response.headers.get("Retry-After"))
            if attempt == self.max_retries:
                raise ExtractError(f"{self.spec.name}: {url}: giving up after {attempt + 1} attempts ({problem})")
            if wait is None:
                wait = self.backoff * (2**attempt) * (1 + random.random() * 0.1)
            wait = min(wait, self.max_backoff)
            self.retries += 1
            log.warning(
                "%s: %s, retrying in %.1fs (attempt %d of %d)",
                self.spec.name,
                problem,
                wait,
                attempt + 1,
                self.max_retries,
            )
            self.sleep(wait)
        raise AssertionError("unreachable")

    def fetch(self, start: date, end: date) -> list[dict]:
        """Every record of the interval [start, end), following the configured pagination."""
        names = {"start": "start", "end": "end", **(self.spec.get("interval_params", {}) or {})}
        params: dict = {
            **(self.spec.get("params", {}) or {}),
            names["start"]: start.isoformat(),
            names["end"]: end.isoformat(),
        }
        paging = self.spec.get("pagination", {}) or {}
        kind = paging.get("type", "none")
        if kind == "page":
            params[paging.get("param", "page")] = int(paging.get("start", 1))
            if paging.get("size_param"):
                params[paging["size_param"]] = int(paging.get("size", 500))
        url: str = self.url
        records: list[dict] = []
        for _ in range(MAX_PAGES):
            body = self.get(url, params)
            page = _dig(body, self.spec.get("records_path")) if self.spec.get("records_path") else body
            if not isinstance(page, list):
                raise ExtractError(
                    f"{self.spec.name}: {url}: expected a list of records at "
                    f"'{self.spec.get('records_path') or '(body)'}', got {type(page).__name__}"
                )
            bad = next((i for i, r in enumerate(page) if not isinstance(r, dict)), None)
            if bad is not None:
                raise ExtractError(f"{self.spec.name}: {url}: record {bad + 1} of the page is not a JSON object")
            records.extend(page)
            if kind == "page":
                size = int(paging.get("size", 500)) if paging.get("size_param") else None
                if not page or (size is not None and len(page) < size):
                    return records
                params[paging.get("param", "page")] += 1
            elif kind == "cursor":
                cursor = _dig(body, paging.get("next_field", "next_cursor"))
                if not cursor:
                    return records
                params[paging.get("param", "cursor")] = cursor
            elif kind == "next_url":
                nxt = _dig(body, paging.get("next_field", "next"))
                if not nxt:
                    return records
                url, params = urljoin(url, nxt), {}  # the next URL carries its own query
            else:
                return records
        raise ExtractError(
            f"{self.spec.name}: more than {MAX_PAGES} pages for {start}: is the pagination configured right?"
        )


def days_to_load(last_loaded: date | None, start_date: date | None, as_of: date) -> list[date]:
    """The run's own day, plus every day after the last loaded one (or from start_date when nothing is loaded)."""
    first = last_loaded + timedelta(days=1) if last_loaded else (start_date or as_of)
    days = [first + timedelta(days=i) for i in range((as_of - first).days + 1)] if first <= as_of else []
    return days if as_of in days else [*days, as_of]


def extract_http(con, spec: SourceSpec, ctx: LoadContext, client: ApiClient | None = None) -> list[BatchResult]:
    client = client or ApiClient(spec)
    last = con.execute(
        "SELECT max(file_date) FROM raw.loaded_files WHERE source = ? AND file_date <= ?", [spec.name, ctx.as_of]
    ).fetchall()[0][0]
    start_date = date.fromisoformat(str(spec.options["start_date"])) if spec.get("start_date") else None
    results = []
    for day in days_to_load(last, start_date, ctx.as_of):
        records = client.fetch(day, day + timedelta(days=1))
        origin = f"{client.url} [{day}, {day + timedelta(days=1)})"
        # A day without records still replaces its partition (by nothing).
        batch = read_records(con, records, origin, empty_columns=spec.dataset.names)
        plan = (spec.mapping if records else Mapping()).plan(spec.dataset, batch.columns, origin)
        partition = day.isoformat()
        result = load_batch(con, ctx, spec.name, spec.dataset, plan, batch, partition, day)
        result.notes.append(f"{client.requests} requests, {client.retries} retries so far")
        con.execute("DELETE FROM raw.loaded_files WHERE source = ? AND source_file = ?", [spec.name, partition])
        con.execute(
            "INSERT INTO raw.loaded_files (source, source_file, file_date, size_bytes, mtime_ns, loaded_at) "
            "VALUES (?, ?, ?, ?, 0, ?)",
            [spec.name, partition, day, len(records), ctx.now],
        )
        results.append(result)
    return results
