"""The segment API over a snapshot written from known documents: auth, scopes, limits, lookups, pagination,
consent, CORS, logs, and every route's responses checked against the OpenAPI document it publishes."""

from __future__ import annotations

import json
import logging
import time
import uuid

import jsonschema
import pytest
from fastapi.testclient import TestClient

from segflow.serving import keys, snapshot
from segflow.serving.api import RateLimiter, create_app
from segflow.serving.store import RedisStore, SnapshotStore

AS_OF = "2026-09-30"


def profile(user: str, marketing: bool, segments: list[str]) -> dict:
    return {
        "user_id": user,
        "as_of": AS_OF,
        "primary_segment": segments[0],
        "segments": [
            {"name": s, "rule": s, "priority": i + 1, "is_primary": i == 0, "since": AS_OF, "evidence": {"x": 1}}
            for i, s in enumerate(segments)
        ],
        "persona": {"cluster_id": 1, "name": "Young Frequent Buyers"},
        "churn": {
            "probability": 0.7,
            "risk_band": "high",
            "reasons": [{"feature": "recency_days", "value": "60", "probability_change": 0.2}],
        },
        "lifetime_value": None,
        "lifecycle_stage": "at_risk",
        "consent": {"marketing": marketing, "tracking": True},
        "usage": "marketing_and_personalisation" if marketing else "personalisation_only",
        "model_versions": {"clusterer": "1", "churn": "2", "clv": "1"},
        "triggers": [],
    }


def published(generation: int = 0, users: int = 25) -> dict:
    """25 users in 'At-Risk', every third without marketing consent; ids sort as numbers do."""
    profiles = {f"U{i:03d}": profile(f"U{i:03d}", i % 3 != 0, ["At-Risk", "General Audience"]) for i in range(users)}
    for doc in profiles.values():
        doc["persona"]["cluster_id"] = generation  # marks the version each document was written in
    members = [u for u, d in profiles.items() if d["consent"]["marketing"]]
    segments = {
        name: {
            "name": name,
            "rule": name,
            "description": f"{name} users",
            "size": users,
            "primary_size": users if name == "At-Risk" else 0,
            "marketable_size": len(members),
            "as_of": AS_OF,
        }
        for name in ("At-Risk", "General Audience")
    }
    return {
        "as_of": AS_OF,
        "profiles": profiles,
        "identifiers": {
            "anonymous_id:anon-7": "U007",
            "crm_contact_id:C7": "U007",
            "email_sha256:" + "ab" * 32: "U008",
        },
        "segments": segments,
        "members": {"At-Risk": members, "General Audience": members},
    }


def publish(directory, generation: int = 0, users: int = 25) -> str:
    version = f"v{generation:04d}"
    docs = published(generation, users)
    rows = {
        **docs,
        "profiles": [(user, json.dumps(doc)) for user, doc in docs["profiles"].items()],
        "identifiers": sorted(docs["identifiers"].items()),
        "members": [(segment, user) for segment, users in docs["members"].items() for user in users],
    }
    snapshot.write_snapshot(rows, directory, version)
    snapshot.switch_to(directory, version)
    return version


@pytest.fixture
def serving(make_settings, tmp_path):
    settings = make_settings(
        tmp_path,
        tmp_path / "data",
        SEGFLOW__SERVING__BATCH_MAX="5",
        SEGFLOW__SERVING__PAGE_SIZE="4",
        SEGFLOW__SERVING__CORS_ORIGINS='["https://shop.example"]',
    )
    path = tmp_path / "serving" / "api_keys.sqlite"
    full, _ = keys.create_key(path, keys.SCOPES, "test")
    profiles_only, _ = keys.create_key(path, ["read:profiles"], "cms")
    return {"settings": settings, "dir": tmp_path / "serving", "keys": path, "full": full, "profiles": profiles_only}


def client(serving, **kwargs) -> TestClient:
    return TestClient(create_app(serving["settings"], **kwargs))


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_not_ready_until_a_version_is_switched_in(serving):
    api = client(serving)
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").status_code == 503
    assert api.get("/v1/profiles/U001", headers=auth(serving["full"])).status_code == 503
    version = publish(serving["dir"])
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["serving_version"] == version
    assert ready.json()["as_of"] == AS_OF


def test_keys_are_required_scoped_stored_hashed_and_revocable(serving):
    publish(serving["dir"])
    api = client(serving)
    assert api.get("/v1/profiles/U001").status_code == 401
    assert api.get("/v1/profiles/U001", headers=auth("sf_nope_nope")).status_code == 401
    assert api.get("/v1/profiles/U001", headers={"X-API-Key": serving["profiles"]}).status_code == 200
    assert api.get("/v1/segments", headers=auth(serving["profiles"])).status_code == 403
    assert serving["full"] not in serving["keys"].read_bytes().decode(errors="replace")
    key_id = serving["profiles"].split("_")[1]
    assert keys.revoke_key(serving["keys"], key_id)
    assert client(serving).get("/v1/profiles/U001", headers=auth(serving["profiles"])).status_code == 401
    with pytest.raises(ValueError, match="scopes"):
        keys.create_key(serving["keys"], ["write:everything"])


def test_each_key_is_rate_limited_with_retry_after(serving):
    publish(serving["dir"])
    slow, _ = keys.create_key(serving["keys"], keys.SCOPES, "slow", rate_limit_per_minute=3)
    now = [1000.0]
    api = client(serving, limiter=RateLimiter(clock=lambda: now[0]))
    codes = [api.get("/v1/profiles/U001", headers=auth(slow)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = api.get("/v1/profiles/U001", headers=auth(slow))
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "20"  # 3 a minute: one per 20 s
    assert api.get("/v1/profiles/U001", headers=auth(serving["full"])).status_code == 200  # other keys unaffected
    now[0] += 20
    assert api.get("/v1/profiles/U001", headers=auth(slow)).status_code == 200


def test_lookups_resolve_every_kind_of_id(serving):
    publish(serving["dir"])
    api = client(serving)
    for identifier, user in [
        ("U007", "U007"),
        ("anon-7", "U007"),
        ("anonymous_id:anon-7", "U007"),
        ("C7", "U007"),
        ("email_sha256:" + "AB" * 32, "U008"),
        ("user_id:U009", "U009"),
    ]:
        response = api.get(f"/v1/profiles/{identifier}", headers=auth(serving["full"]))
        assert response.status_code == 200, identifier
        assert response.json()["user_id"] == user
    for unknown in ("U999", "email_sha256:" + "cd" * 32, "crm_contact_id:U007"):
        assert api.get(f"/v1/profiles/{unknown}", headers=auth(serving["full"])).status_code == 404


def test_batch_lookups(serving):
    publish(serving["dir"])
    api = client(serving)
    response = api.post(
        "/v1/profiles:batch", json={"ids": ["U001", "anon-7", "U999", "U001"]}, headers=auth(serving["full"])
    )
    body = response.json()
    assert response.status_code == 200
    assert sorted(body["profiles"]) == ["U001", "anon-7"] and body["not_found"] == ["U999"]
    assert body["profiles"]["anon-7"]["user_id"] == "U007"
    too_many = api.post(
        "/v1/profiles:batch", json={"ids": [f"U{i:03d}" for i in range(6)]}, headers=auth(serving["full"])
    )
    assert too_many.status_code == 422


def test_members_are_paged_and_only_consenting(serving):
    publish(serving["dir"])
    api = client(serving)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"cursor": cursor} if cursor else {}
        page = api.get("/v1/segments/At-Risk/members", params=params, headers=auth(serving["full"])).json()
        assert len(page["members"]) <= 4
        seen += page["members"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    consenting = [u for u, d in published()["profiles"].items() if d["consent"]["marketing"]]
    assert seen == consenting and pages == 4  # 16 members, 4 a page, each exactly once, in id order
    profile_of_unconsenting = api.get("/v1/profiles/U003", headers=auth(serving["full"])).json()
    assert profile_of_unconsenting["usage"] == "personalisation_only"
    assert api.get("/v1/segments/Nope/members", headers=auth(serving["full"])).status_code == 404
    assert api.get("/v1/segments/At-Risk/members?cursor=%%%", headers=auth(serving["full"])).status_code == 400


def test_cors_and_logs_without_ids_in_clear(serving, caplog):
    publish(serving["dir"])
    api = client(serving)
    with caplog.at_level(logging.INFO, logger="segflow.serving.requests"):
        response = api.get("/v1/profiles/anon-7", headers={**auth(serving["full"]), "Origin": "https://shop.example"})
    assert response.headers["access-control-allow-origin"] == "https://shop.example"
    other = api.get("/v1/profiles/U001", headers={**auth(serving["full"]), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "segflow.serving.requests")
    assert "/v1/profiles/~" in logged and "anon-7" not in logged
    assert serving["full"] not in logged


def _schema(document: dict, ref_or_schema: dict) -> dict:
    """A response schema with the document's components, for jsonschema to resolve $refs against."""
    return {**ref_or_schema, "components": document["components"]}


def test_every_route_answers_as_its_openapi_document_says(serving):
    """Contract test: each operation of the published document is called with valid input (and without a key);
    every status it returns must be declared, and the body must validate against the declared schema."""
    publish(serving["dir"])
    api = client(serving)
    document = api.get("/openapi.json").json()
    examples = {"id": "anon-7", "name": "At-Risk"}
    calls = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            url = path
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    url = url.replace("{" + parameter["name"] + "}", examples[parameter["name"]])
            body = {"ids": ["U001", "U999"]} if "requestBody" in operation else None
            secured = any(p.get("in") == "header" for p in operation.get("parameters", [])) or operation.get("security")
            for headers in [auth(serving["full"]), {}] if secured else [{}]:
                response = api.request(method.upper(), url, json=body, headers=headers)
                declared = operation["responses"]
                assert str(response.status_code) in declared, (method, path, response.status_code)
                content = declared[str(response.status_code)].get("content", {}).get("application/json")
                if content and content.get("schema"):
                    jsonschema.validate(response.json(), _schema(document, content["schema"]))
                calls += 1
    assert calls >= 9


def test_concurrent_readers_see_only_whole_versions_while_snapshots_switch(serving):
    """Readers read many documents in one view while a writer switches versions; every document of a view must
    come from the view's own version (the generation written into each document)."""
    _whole_versions_under_switching(
        SnapshotStore(serving["dir"]),
        lambda generation: publish(serving["dir"], generation, users=200),
    )


def test_redis_store_switches_atomically_and_expires_the_replaced_version(serving, redis_url):
    store = RedisStore(redis_url, prefix=f"segflow-test-{uuid.uuid4().hex[:8]}")
    try:

        def load(generation: int) -> str:
            version = publish(serving["dir"], generation, users=200)
            store.load(snapshot.snapshot_file(serving["dir"], version), version, grace_seconds=30)
            return version

        _whole_versions_under_switching(store, load)
        r = store.client
        # A sync killed midway: registered, partly loaded, never current.
        r.sadd(f"{store.prefix}:versions", "v0050")
        r.hset(f"{store.prefix}:v:v0050:profiles", "U001", "{}")
        r.sadd(f"{store.prefix}:v:v0050:keys", f"{store.prefix}:v:v0050:profiles")
        first, second = load(100), load(101)
        assert store.current() == second
        assert 0 < r.ttl(f"{store.prefix}:v:{first}:profiles") <= 30  # the replaced version: readable for 30 s
        assert r.ttl(f"{store.prefix}:v:{second}:profiles") == -1
        assert r.ttl(f"{store.prefix}:v:v0008:profiles") <= 30  # older ones: expiring or gone, never kept
        assert not r.exists(f"{store.prefix}:v:v0050:profiles")
        with store.view() as view:
            assert view.members("At-Risk", "", 3) == ["U001", "U002", "U004"]
            assert view.members("At-Risk", "U196", 10) == ["U197", "U199"]  # U198: no marketing consent
            assert view.resolve("anonymous_id:anon-7") == "U007"
        app = create_app(serving["settings"], store=store)
        assert TestClient(app).get("/v1/profiles/anon-7", headers=auth(serving["full"])).json()["user_id"] == "U007"
    finally:
        keys_left = list(store.client.scan_iter(f"{store.prefix}:*"))
        if keys_left:
            store.client.delete(*keys_left)


def _whole_versions_under_switching(store, publish_generation) -> None:
    import threading

    publish_generation(0)
    stop = threading.Event()
    problems: list[str] = []
    views = [0]

    def reader() -> None:
        while not stop.is_set():
            with store.view() as view:
                generation = int(view.version.lstrip("v"))
                for user in ("U000", "U050", "U100", "U199"):
                    doc = view.profile(user)
                    if doc is None or doc["persona"]["cluster_id"] != generation:
                        problems.append(f"{view.version}: {user} -> {doc and doc['persona']['cluster_id']}")
                views[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for generation in range(1, 9):
            publish_generation(generation)
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not problems, problems[:5]
    assert views[0] > 8
    assert store.current() == "v0008"


def test_replaced_snapshots_are_deleted_after_the_grace_period_and_nothing_else(serving):
    import os

    for generation in range(3):
        publish(serving["dir"], generation)
    files = {g: snapshot.snapshot_file(serving["dir"], f"v{g:04d}") for g in range(3)}
    now = time.time()
    os.utime(files[1], (now - 100, now - 100))  # v0000 was replaced 100 s ago, v0001 just now
    assert snapshot.expire_old(serving["dir"], grace_seconds=60, now=now) == ["v0000"]
    assert not files[0].exists() and files[1].exists() and files[2].exists()
    assert serving["keys"].exists(), "the keys file beside the snapshots is not a version"
    assert snapshot.expire_old(serving["dir"], grace_seconds=0, now=now) == ["v0001"]
    assert snapshot.current_version(serving["dir"]) == "v0002" and files[2].exists()


def test_a_redis_sync_killed_midway_leaves_nothing_after_the_next(serving, redis_url, monkeypatch):
    """Killed while loading (no cleanup runs: KeyboardInterrupt is not an Exception): the current version stays
    current, and the next sync deletes every key the killed one wrote."""
    store = RedisStore(redis_url, prefix=f"segflow-test-{uuid.uuid4().hex[:8]}")
    r = store.client
    try:
        first = publish(serving["dir"], 1)
        store.load(snapshot.snapshot_file(serving["dir"], first), first, grace_seconds=0)
        killed = publish(serving["dir"], 2)
        calls = {"n": 0}
        send = RedisStore._send

        def dies_on_the_third_call(self, commands):
            calls["n"] += 1
            if calls["n"] == 3:  # meta and profiles written, identifiers next
                raise KeyboardInterrupt
            return send(self, commands)

        monkeypatch.setattr(RedisStore, "_send", dies_on_the_third_call)
        with pytest.raises(KeyboardInterrupt):
            store.load(snapshot.snapshot_file(serving["dir"], killed), killed, grace_seconds=0)
        monkeypatch.setattr(RedisStore, "_send", send)
        assert store.current() == first and r.exists(f"{store.prefix}:v:{killed}:profiles")
        with store.view() as view:
            assert view.profile("U001")["persona"]["cluster_id"] == 1
        last = publish(serving["dir"], 3)
        store.load(snapshot.snapshot_file(serving["dir"], last), last, grace_seconds=0)
        left = {k for k in r.scan_iter(f"{store.prefix}:v:*") if not k.startswith(f"{store.prefix}:v:{last}:")}
        assert left == set(), left
    finally:
        keys_left = list(r.scan_iter(f"{store.prefix}:*"))
        if keys_left:
            r.delete(*keys_left)


def test_ids_and_segment_names_with_slashes(serving, caplog):
    docs = published()
    docs["profiles"]["web/42"] = profile("web/42", True, ["Home/Garden"])
    docs["identifiers"]["anonymous_id:dev/ice/7"] = "web/42"
    docs["segments"]["Home/Garden"] = {**docs["segments"]["At-Risk"], "name": "Home/Garden", "rule": "Interested"}
    docs["members"]["Home/Garden"] = ["web/42"]
    snapshot.write_snapshot(
        {
            **docs,
            "profiles": sorted((u, json.dumps(d)) for u, d in docs["profiles"].items()),
            "identifiers": sorted(docs["identifiers"].items()),
            "members": sorted((s, u) for s, users in docs["members"].items() for u in users),
        },
        serving["dir"],
        "v0001",
    )
    snapshot.switch_to(serving["dir"], "v0001")
    api = client(serving)
    with caplog.at_level(logging.INFO, logger="segflow.serving.requests"):
        assert api.get("/v1/profiles/web/42", headers=auth(serving["full"])).json()["user_id"] == "web/42"
        assert api.get("/v1/profiles/dev/ice/7", headers=auth(serving["full"])).json()["user_id"] == "web/42"
        page = api.get("/v1/segments/Home/Garden/members", headers=auth(serving["full"])).json()
    assert page["members"] == ["web/42"]
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "segflow.serving.requests")
    assert "web" not in logged and "ice" not in logged and "Garden" not in logged
    assert "/v1/segments/~" in logged and "/members" in logged
