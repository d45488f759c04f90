"""The segment API (`segflow serve`): profiles and segment memberships for websites, CMS and apps.

Every /v1 route needs an API key (`segflow api-key create`) in `Authorization: Bearer <key>` or `X-API-Key`, with
the route's scope; requests are rate-limited per key. Each request answers from one serving version (one `view()`
of the store). Responses carry no clear-text PII: ids, hashed emails, scores and memberships only. docs/serving.md.
"""

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from segflow.serving import keys as api_keys
from segflow.serving.snapshot import LOOKUP_TYPES
from segflow.serving.store import ServingStore, VersionView, open_store

log = logging.getLogger("segflow.serving.requests")


# --- response documents ----------------------------------------------------------------------------------------


class Membership(BaseModel):
    name: str = Field(description="Segment name.")
    rule: str = Field(description="The rule (segment_rules seed) that put the user there.")
    priority: int = Field(description="Rule priority (1 = highest).")
    is_primary: bool = Field(description="The user's highest-priority segment.")
    since: str | None = Field(description="The published date the user last entered the segment.")
    evidence: dict[str, Any] | str | None = Field(description="The feature values that satisfied the rule.")


class Persona(BaseModel):
    cluster_id: int | None
    name: str | None


class ChurnReason(BaseModel):
    feature: str | None
    value: str
    probability_change: float | None = Field(
        description="How much the churn probability falls when this feature alone is typical."
    )


class Churn(BaseModel):
    probability: float | None = Field(description="Calibrated churn probability; null for users who never bought.")
    risk_band: str | None = Field(description="high, medium, low; prospect for users who never bought.")
    reasons: list[ChurnReason] = Field(description="Reason codes of medium and high risk users.")


class LifetimeValue(BaseModel):
    clv_12m: float | None
    expected_orders_90d: float | None
    p_alive: float | None


class Consent(BaseModel):
    marketing: bool = Field(description="Email-marketing consent: the user may be a campaign audience member.")
    tracking: bool


class ModelVersions(BaseModel):
    clusterer: str | None
    churn: str | None
    clv: str | None


class ActiveTrigger(BaseModel):
    rule: str = Field(description="The trigger rule (dbt_project/seeds/trigger_rules.csv).")
    since: str = Field(description="Event time the user entered it (UTC, ISO 8601).")
    evidence: dict[str, Any] = Field(description="What made the user enter, e.g. the category left in the cart.")


class Profile(BaseModel):
    user_id: str
    as_of: str = Field(description="The date the features, segments and scores are as of.")
    primary_segment: str | None
    segments: list[Membership]
    persona: Persona
    churn: Churn
    lifetime_value: LifetimeValue | None = Field(description="Null for users who never bought.")
    lifecycle_stage: str | None
    consent: Consent
    usage: Literal["marketing_and_personalisation", "personalisation_only"] = Field(
        description="personalisation_only: no marketing consent - use for on-site content, never for campaigns."
    )
    model_versions: ModelVersions
    triggers: list[ActiveTrigger] = Field(
        description="Real-time triggers active now (`segflow stream`; empty when no stream is configured)."
    )
    serving_version: str


class BatchRequest(BaseModel):
    ids: list[str] = Field(min_length=1, description="Ids as accepted by GET /v1/profiles/{id}.")


class BatchResponse(BaseModel):
    profiles: dict[str, Profile] = Field(description="By the id as requested.")
    not_found: list[str]
    serving_version: str


class Segment(BaseModel):
    name: str
    rule: str
    description: str | None
    size: int = Field(description="Members on as_of.")
    primary_size: int = Field(description="Members whose primary segment it is.")
    marketable_size: int = Field(description="Members with marketing consent (those /members lists).")
    as_of: str


class SegmentList(BaseModel):
    as_of: str
    serving_version: str
    segments: list[Segment]


class MembersPage(BaseModel):
    segment: str
    as_of: str
    serving_version: str
    members: list[str] = Field(description="User ids with marketing consent, in id order.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    serving_version: str | None
    as_of: str | None
    detail: str | None = None


class ErrorBody(BaseModel):
    detail: str


# --- keys and limits -------------------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute, bursts up to that many."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def take(self, key_id: str, per_minute: int) -> float:
        """0 when the request may proceed, else the seconds until it may."""
        rate = per_minute / 60.0
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key_id, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - last) * rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / rate


class KeyCache:
    """Verified keys, kept `ttl` seconds so a request does not open the keys file; revocations apply within ttl."""

    def __init__(self, path: Path, ttl: float = 10.0) -> None:
        self.path = path
        self.ttl = ttl
        self._seen: dict[str, tuple[float, api_keys.ApiKey | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> api_keys.ApiKey | None:
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._seen.get(digest)
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        record = api_keys.verify_key(self.path, key)
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[digest] = (now, record)
        return record


_bearer = HTTPBearer(auto_error=False, description="An API key: Authorization: Bearer sf_...")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key (alternative header).")


def _cursor(user_id: str) -> str:
    return base64.urlsafe_b64encode(user_id.encode()).decode().rstrip("=")


def _after(cursor: str | None) -> str:
    if not cursor:
        return ""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise HTTPException(400, "malformed cursor") from None


TYPED = {"user_id", "email_sha256", *LOOKUP_TYPES}  # id prefixes lookup() reads as a type


def lookup(view: VersionView, identifier: str) -> str | None:
    """The stored profile (JSON text) of an id a caller sends: a user id, `email_sha256:<hex>`, `<type>:<id>` of the
    identity graph, or an untyped id - tried as a user id, then as a CRM contact / anonymous / analytics /
    transaction id, in that order. One store read for a user id, two for anything resolved through the graph."""
    kind, sep, value = identifier.partition(":")
    if sep and kind == "user_id":
        return view.profile_json(value)
    if sep and kind == "email_sha256":
        user = view.resolve(f"email_sha256:{value.strip().lower()}")
        return view.profile_json(user) if user else None
    if sep and kind in LOOKUP_TYPES:
        user = view.resolve(identifier)
        return view.profile_json(user) if user else None
    doc = view.profile_json(identifier)
    if doc is not None:
        return doc
    for kind in LOOKUP_TYPES:
        user = view.resolve(f"{kind}:{identifier}")
        if user:
            return view.profile_json(user)
    return None


TRIGGERS_TAIL = re.compile(r'"triggers":\s*\[\]\s*}$')


def finish(doc: str, version: str, triggers: str | None = None) -> str:
    """A stored profile document (JSON text ending in `"triggers":[]}`) with its active triggers (JSON text) and the
    serving version spliced in."""
    body = doc[:-1]
    tail = TRIGGERS_TAIL.search(doc) if triggers is not None else None
    if tail:
        body = f'{doc[: tail.start()]}"triggers":{triggers}'
    return f'{body},"serving_version":{json.dumps(version)}}}'


class TriggerSource:
    """The real-time triggers `segflow stream` keeps per user in its Redis (stream.url), read per request: a
    profile shows them the moment they fire, whichever serving version it comes from."""

    def __init__(self, settings) -> None:
        url = settings.raw["stream"].get("url")
        self.client = None
        self._warned = 0.0
        if url:
            from segflow.realtime.consumer import StreamKeys, redis_client

            self.client = redis_client(url)
            self.keys = StreamKeys(settings.raw["stream"]["key_prefix"])

    def of(self, docs: list[str]) -> list[str | None]:
        """The active triggers (JSON text, None when there are none) of each profile document's user."""
        if self.client is None or not docs:
            return [None] * len(docs)
        import redis

        pipe = self.client.pipeline(transaction=False)
        for doc in docs:
            pipe.hgetall(self.keys.active(json.loads(doc)["user_id"]))
        try:
            results = pipe.execute()
        except redis.RedisError as exc:
            # The profile still answers (segments and scores do not depend on the stream); the log says why its
            # triggers are missing.
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                log.warning("real-time triggers unavailable (stream.url): %s", exc)
            return [None] * len(docs)
        out: list[str | None] = []
        for held in results:
            items = []
            for rule in sorted(held):
                # Parsed and written again field by field: whatever else the hash holds never reaches the profile.
                try:
                    doc = json.loads(held[rule])
                    item = {"rule": rule, "since": str(doc["since"]), "evidence": dict(doc["evidence"])}
                except (ValueError, KeyError, TypeError):
                    continue
                items.append(json.dumps(item, separators=(",", ":")))
            out.append(f"[{','.join(items)}]" if items else None)
        return out


def create_app(settings, store: ServingStore | None = None, limiter: RateLimiter | None = None) -> FastAPI:
    """The API over `store` (default: the configured one), keys from `serving.keys_file`."""
    serving = settings.raw["serving"]
    store = store or open_store(settings)
    limiter = limiter or RateLimiter()
    key_cache = KeyCache(Path(serving["keys_file"]))
    log_salt = secrets.token_bytes(16)  # per process: log lines correlate within a run, ids stay unreadable

    app = FastAPI(
        title="segflow segment API",
        version="1",
        description="Profiles, segment memberships and scores of the latest published run. docs/serving.md.",
        responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 429: {"model": ErrorBody}},
    )
    if serving["cors_origins"]:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=serving["cors_origins"],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )

    def shown(path: str) -> str:
        """The request path for the log: ids replaced by a keyed hash unless serving.log_ids."""
        if serving["log_ids"]:
            return path
        parts = path.split("/", 3)  # ids and segment names may hold '/': everything after the collection
        if len(parts) == 4 and parts[1] == "v1" and parts[2] in ("profiles", "segments"):
            rest, members = parts[3], ""
            if parts[2] == "segments" and rest.endswith("/members"):
                rest, members = rest[: -len("/members")], "/members"
            digest = hmac.new(log_salt, rest.encode(), hashlib.sha256).hexdigest()[:12]
            return f"/v1/{parts[2]}/~{digest}{members}"
        return path

    async def request_log(scope, receive, send) -> None:
        """Pure ASGI (no BaseHTTPMiddleware: it would cost more than a lookup): one log line per request."""
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sent(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await inner(scope, receive, sent)
        finally:
            log.info(
                "%s %s %s %.1fms key=%s",
                scope["method"],
                shown(scope["path"]),
                status[0],
                (time.perf_counter() - started) * 1000,
                scope.get("state", {}).get("key_id", "-"),
            )

    def authorise(scope: str):
        async def check(
            request: Request,
            bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
            header: Annotated[str | None, Depends(_header)],
        ) -> api_keys.ApiKey:
            key = bearer.credentials if bearer else header
            record = key_cache.get(key) if key else None
            if record is None:
                raise HTTPException(401, "a valid API key is required", headers={"WWW-Authenticate": "Bearer"})
            request.state.key_id = record.key_id
            if scope not in record.scopes:
                raise HTTPException(403, f"this key lacks the scope {scope}")
            wait = limiter.take(record.key_id, record.rate_limit_per_minute or serving["rate_limit_per_minute"])
            if wait:
                raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": str(math.ceil(wait))})
            return record

        return check

    def serving_view(view: VersionView | None) -> VersionView:
        if view is None:
            raise HTTPException(503, "no serving version is loaded yet (the scoring run syncs one)")
        return view

    triggers = TriggerSource(settings)

    def profile_of(view: VersionView, identifier: str) -> str | None:
        """The stored document with the active triggers and the serving version added, as JSON text (not parsed and
        re-validated: the documents are written to the Profile schema, which the contract test checks)."""
        doc = lookup(view, identifier)
        return finish(doc, view.version, triggers.of([doc])[0]) if doc else None

    not_found: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}, 503: {"model": ErrorBody}}

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, tags=["operations"])
    async def readyz():
        """Ready when a serving version is loaded."""
        try:
            with store.view() as view:
                meta = view.meta() if view else {}
                version = view.version if view else None
        except Exception as exc:  # noqa: BLE001 - any store failure means not ready; the reason is reported
            return JSONResponse(
                {"status": "not_ready", "serving_version": None, "as_of": None, "detail": type(exc).__name__},
                status_code=503,
            )
        if not version:
            body = {"status": "not_ready", "serving_version": None, "as_of": None, "detail": "no version loaded"}
            return JSONResponse(body, status_code=503)
        return {"status": "ready", "serving_version": version, "as_of": meta.get("as_of")}

    @app.get("/v1/profiles/{id:path}", response_model=Profile, responses=not_found, tags=["profiles"])
    async def get_profile(
        id: Annotated[str, PathParam(description="User id, CRM contact id, anonymous/device id or email_sha256:<hex>")],
        _: Annotated[api_keys.ApiKey, Depends(authorise("read:profiles"))],
    ) -> Response:
        """One visitor's profile: segments with evidence, persona, churn, lifetime value, consent."""
        with store.view() as view:
            doc = profile_of(serving_view(view), id)
        if doc is None:
            raise HTTPException(404, "no profile for this id")
        return Response(doc, media_type="application/json")

    @app.post("/v1/profiles:batch", response_model=BatchResponse, responses=not_found, tags=["profiles"])
    async def batch_profiles(
        body: BatchRequest, _: Annotated[api_keys.ApiKey, Depends(authorise("read:profiles"))]
    ) -> Response:
        """Up to `serving.batch_max` profiles in one call, from one serving version."""
        if len(body.ids) > serving["batch_max"]:
            raise HTTPException(422, f"at most {serving['batch_max']} ids per request")
        with store.view() as view:
            view = serving_view(view)
            found: list[str] = []
            missing: list[str] = []
            identifiers = list(dict.fromkeys(body.ids))
            # Untyped ids are tried as user ids first in one read; the rest go through lookup() one by one.
            untyped = [i for i in identifiers if i.partition(":")[0] not in TYPED]
            direct = dict(zip(untyped, view.profiles_json(untyped), strict=True))
            docs: list[tuple[str, str]] = []
            for identifier in identifiers:
                doc = direct.get(identifier) or lookup(view, identifier)
                if doc is None:
                    missing.append(identifier)
                else:
                    docs.append((identifier, doc))
            active = triggers.of([doc for _, doc in docs])
            for (identifier, doc), held in zip(docs, active, strict=True):
                found.append(f"{json.dumps(identifier)}:{finish(doc, view.version, held)}")
            version = view.version
        text = (
            f'{{"profiles":{{{",".join(found)}}},"not_found":{json.dumps(missing)},'
            f'"serving_version":{json.dumps(version)}}}'
        )
        return Response(text, media_type="application/json")

    @app.get("/v1/segments", response_model=SegmentList, responses=not_found, tags=["segments"])
    async def list_segments(_: Annotated[api_keys.ApiKey, Depends(authorise("read:segments"))]) -> dict:
        """Every segment of the latest published date with its sizes."""
        with store.view() as view:
            view = serving_view(view)
            return {"as_of": view.meta().get("as_of"), "serving_version": view.version, "segments": view.segments()}

    @app.get(
        "/v1/segments/{name:path}/members",
        response_model=MembersPage,
        responses={**not_found, 400: {"model": ErrorBody}},
        tags=["segments"],
    )
    async def segment_members(
        name: str,
        _: Annotated[api_keys.ApiKey, Depends(authorise("read:segments"))],
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
        limit: Annotated[int | None, Query(ge=1, description="Page size (at most serving.page_size)")] = None,
    ) -> dict:
        """The members with marketing consent, a page at a time (users without it are never listed)."""
        size = min(limit or serving["page_size"], serving["page_size"])
        after = _after(cursor)
        with store.view() as view:
            view = serving_view(view)
            if not any(s["name"] == name for s in view.segments()):
                raise HTTPException(404, "no such segment")
            users = view.members(name, after, size + 1)
            page, more = users[:size], len(users) > size
            return {
                "segment": name,
                "as_of": view.meta().get("as_of"),
                "serving_version": view.version,
                "members": page,
                "next_cursor": _cursor(page[-1]) if more and page else None,
            }

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    inner = app.build_middleware_stack()
    app.middleware_stack = request_log
    return app
