"""shoal.web.auth: keys, tokens, node signatures, rate limits and the middleware, on a real ASGI app."""

from __future__ import annotations

import argparse
import base64
import json
import os
import stat
import time

import httpx
import jwt
import pytest
from starlette.requests import Request

from shoal.testing import asgi_client
from shoal.web import COMPUTE_ENVELOPE, STATE_ENVELOPE, Api, create_app, read_raw_body, respond_json
from shoal.web.auth import (
    NODE,
    OPERATOR,
    VIEWER,
    AuthDir,
    AuthDirError,
    AuthError,
    AuthLayer,
    BearerAuth,
    KeyTable,
    Rate,
    RateLimiter,
    RequestVerifier,
    Requirement,
    SignedAuth,
    add_auth_arguments,
    check_startup,
    decode_token,
    issue_node_token,
    issue_token,
    principal,
    sign_request,
)
from shoal.web.auth.signing import NonceCache


@pytest.fixture
def auth_dir(tmp_path):
    d = tmp_path / "auth"
    admin = AuthDir(d).init()
    return d, admin


# ---------------------------------------------------------------- keys


def test_init_writes_secret_and_admin_key_private_and_hashed(auth_dir):
    d, admin = auth_dir
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for name in ("auth.json", "admin.key"):
        assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o600
    assert (d / "admin.key").read_text().strip() == admin
    stored = (d / "auth.json").read_text()
    assert admin not in stored and admin[len("shoal_") + 17 :] not in stored  # only the hash is kept
    p = KeyTable(d).authenticate(admin)
    assert (p.role, p.name, p.via) == ("admin", "admin", "key")
    with pytest.raises(AuthDirError, match="already initialised"):
        AuthDir(d).init()


def test_create_list_revoke_and_bad_keys(auth_dir):
    d, _ = auth_dir
    store = AuthDir(d)
    record, key = store.create_key("viewer", "bob")
    table = KeyTable(d, interval=0)
    assert table.authenticate(key).role == "viewer"
    with pytest.raises(AuthDirError, match="already named"):
        store.create_key("operator", "bob")
    with pytest.raises(AuthDirError, match="unknown role"):
        store.create_key("root", "eve")
    # Right id, wrong secret part; garbage; a key that does not exist.
    forged = key[: len("shoal_") + 17] + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    for bad, why in (
        (forged, "unknown API key"),
        ("shoal_x", "malformed"),
        ("shoal_" + "0" * 16 + "_" + "a" * 43, "unknown"),
    ):
        with pytest.raises(AuthError, match=why):
            table.authenticate(bad)
    assert [r.id for r in store.revoke("bob")] == [record.id]
    with pytest.raises(AuthError, match="revoked"):
        table.authenticate(key)
    with pytest.raises(AuthDirError, match="no unrevoked key"):
        store.revoke("bob")
    assert {r.name: r.state() for r in store.keys()} == {"admin": "active", "bob": "revoked"}
    _, bob2 = store.create_key("viewer", "bob", expires_in=0)  # the name is free again; expired at once
    with pytest.raises(AuthError, match="expired"):
        table.authenticate(bob2)


def test_a_reader_notices_a_change_only_after_its_interval(auth_dir):
    d, _ = auth_dir
    _, key = AuthDir(d).create_key("operator", "ops")
    table = KeyTable(d, interval=3600)
    assert table.authenticate(key).role == "operator"
    AuthDir(d).revoke("ops")
    assert table.authenticate(key).role == "operator"  # not re-read yet (interval)
    table.refresh(force=True)
    with pytest.raises(AuthError, match="revoked"):
        table.authenticate(key)


# ---------------------------------------------------------------- tokens

SECRET = b"s" * 32
OTHER = b"o" * 32


def test_jwt_round_trip_and_refusals():
    token = issue_token(SECRET, subject="k1", role="operator", name="ops")
    claims = decode_token(token, [SECRET])
    assert (claims["sub"], claims["role"], claims["iss"]) == ("k1", "operator", "shoal")
    with pytest.raises(AuthError, match="does not verify"):
        decode_token(token, [OTHER])  # forged: another secret
    with pytest.raises(AuthError, match="expired"):
        decode_token(
            issue_token(SECRET, subject="k1", role="viewer", ttl=60, now=time.time() - 3600), [SECRET]
        )
    head, payload, sig = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["role"] = "admin"
    tampered = ".".join((head, base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("="), sig))
    with pytest.raises(AuthError):
        decode_token(tampered, [SECRET])
    unsigned = jwt.encode({**body, "role": "admin"}, None, algorithm="none")
    with pytest.raises(AuthError):
        decode_token(unsigned, [SECRET])
    other_aud = jwt.encode({**body, "aud": "elsewhere"}, b"x" * 32, algorithm="HS256")
    with pytest.raises(AuthError):
        decode_token(other_aud, [SECRET])
    # Rotation: a token of the old secret verifies while the old secret is still accepted.
    assert decode_token(token, [OTHER, SECRET])["sub"] == "k1"
    node = decode_token(issue_node_token(SECRET, "storage-1"), [SECRET])
    assert (node["role"], node["sub"]) == ("node", "node:storage-1")


# ---------------------------------------------------------------- node signatures


def test_signature_verifies_once_and_refuses_forgery_tampering_window_and_replay():
    body = b'{"chunk": 1}'
    verifier = RequestVerifier([SECRET])
    now = time.time()
    h = sign_request(SECRET, "PUT", "/chunks/a%20b?replica=1", body, node_id="uploader-1", now=now)
    p = verifier.verify("PUT", "/chunks/a b", b"replica=1", h, body, now=now + 1)
    assert (p.kind, p.id, p.role, p.via) == ("node", "uploader-1", "node", "hmac")
    with pytest.raises(AuthError, match="replayed"):
        verifier.verify("PUT", "/chunks/a b", b"replica=1", h, body, now=now + 2)

    def fresh(**kw):
        return sign_request(
            kw.pop("secret", SECRET), "PUT", "/chunks/x?r=1", body, node_id="n1", now=now, **kw
        )

    cases = [
        (fresh(secret=OTHER), dict(), "does not verify"),  # forged
        (fresh(), dict(method="DELETE"), "does not verify"),
        (fresh(), dict(path="/chunks/y"), "does not verify"),
        (fresh(), dict(query=b"r=2"), "does not verify"),
        (fresh(), dict(body=b"other"), "body does not match"),
        (fresh(), dict(now=now + 31), "outside the 30 s window"),  # expired
        (fresh(), dict(now=now - 31), "outside the 30 s window"),  # from the future
        ({k: v for k, v in fresh().items() if k != "x-shoal-nonce"}, dict(), "x-shoal-nonce"),
        ({**fresh(), "x-shoal-node": "n2"}, dict(), "does not verify"),  # someone else's name
    ]
    for headers, change, why in cases:
        args = {"method": "PUT", "path": "/chunks/x", "query": b"r=1", "body": body, "now": now, **change}
        with pytest.raises(AuthError, match=why):
            verifier.verify(
                args["method"], args["path"], args["query"], headers, args["body"], now=args["now"]
            )
    # A refused request does not burn its nonce; the genuine one still goes through once.
    good = fresh()
    verifier.verify("PUT", "/chunks/x", b"r=1", good, body, now=now)
    with pytest.raises(AuthError, match="replayed"):
        verifier.verify("PUT", "/chunks/x", b"r=1", good, body, now=now + 29)


def test_nonce_cache_is_bounded_and_forgets_after_its_ttl():
    cache = NonceCache(ttl=60, max_size=2)
    assert cache.add("a" * 16, 0) and cache.add("b" * 16, 1)
    with pytest.raises(AuthError) as full:
        cache.add("c" * 16, 2)
    assert full.value.status == 503 and full.value.headers == {"Retry-After": "1"}
    assert not cache.add("a" * 16, 59)  # still remembered
    assert cache.add("c" * 16, 61) and len(cache) == 1  # a and b expired and were dropped


# ---------------------------------------------------------------- rate limits


def test_token_bucket():
    limiter = RateLimiter(Rate.parse("2/3"))
    assert [limiter.take("k", now=10.0) for _ in range(3)] == [0, 0, 0]
    assert limiter.take("k", now=10.0) == pytest.approx(0.5)
    assert limiter.take("other", now=10.0) == 0
    assert limiter.take("k", now=10.5) == 0  # refilled one token
    assert Rate.parse("100") == Rate(100, 200) and not Rate.parse("0").enabled
    for bad in ("x", "-1", "5/0.5"):
        with pytest.raises(ValueError):
            Rate.parse(bad)


# ---------------------------------------------------------------- the middleware on an app


def make_app(d, envelope=STATE_ENVELOPE, **options):
    api = Api(tags=["t"])

    @api.get("/things")
    async def read(request: Request) -> dict:
        p = principal(request)
        return {"role": p.role, "id": p.id}

    @api.post("/things")
    async def write(request: Request) -> dict:
        return {"ok": True}

    @api.raw("PUT", "/chunks/{cid}")
    async def put_chunk(scope, receive, send, cid):
        body = await read_raw_body(scope, receive, 1 << 20)
        await respond_json(send, 201, {"cid": cid, "size": len(body), "by": scope["shoal.principal"].id})

    @api.get("/public")
    async def public(request: Request) -> dict:
        return {"open": True}

    def policy(ep):
        if ep.path == "/public":
            return None
        if ep.path.startswith("/chunks"):
            return NODE
        return VIEWER if ep.method == "GET" else OPERATOR

    layer = AuthLayer.from_options({"auth_dir": str(d), **options}, envelope)
    app = create_app(title="t", apis=layer.secure([api], policy), envelope=envelope, access_log=False)
    return layer.wrap(app)


async def test_401_403_and_success_in_the_services_own_envelope(auth_dir):
    d, admin = auth_dir
    _, viewer = AuthDir(d).create_key("viewer", "v")
    async with asgi_client(make_app(d)) as c:
        r = await c.get("/things")
        assert r.status_code == 401
        assert r.json()["success"] is False and r.json()["code"] == "UNAUTHORIZED"
        assert r.headers["www-authenticate"].startswith("Bearer")
        for bad in ("Bearer nonsense", "Basic YTpi", "Bearer shoal_" + "0" * 16 + "_" + "a" * 43):
            r = await c.get("/things", headers={"Authorization": bad})
            assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED", bad
        r = await c.get("/things", auth=BearerAuth(viewer))
        assert r.status_code == 200 and r.json()["role"] == "viewer"
        r = await c.post("/things", auth=BearerAuth(viewer))
        assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN"
        assert "operator" in r.json()["error"]
        assert (await c.post("/things", auth=BearerAuth(admin))).status_code == 200
        for open_path in ("/health", "/openapi.json", "/metrics", "/public"):
            assert (await c.get(open_path)).status_code == 200, open_path
        assert (await c.get("/nowhere")).status_code == 404
    async with asgi_client(make_app(d, COMPUTE_ENVELOPE)) as c:
        r = await c.get("/things")
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"


async def test_tokens_from_an_api_key_and_revocation_ends_them(auth_dir):
    d, _ = auth_dir
    record, ops = AuthDir(d).create_key("operator", "ops")
    async with asgi_client(make_app(d)) as c:
        r = await c.post("/auth/token", auth=BearerAuth(ops), params={"ttl": 60})
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        assert r.json()["expires_in"] == 60 and r.json()["role"] == "operator"
        assert (await c.post("/things", auth=BearerAuth(token))).status_code == 200
        who = (await c.get("/auth/whoami", auth=BearerAuth(token))).json()
        assert (who["id"], who["via"]) == (record.id, "jwt")
        r = await c.post("/auth/token", auth=BearerAuth(token))  # a token cannot renew itself
        assert r.status_code == 403
        expired = issue_token(
            KeyTable(d).secrets[0], subject=record.id, role="operator", ttl=10, now=time.time() - 100
        )
        r = await c.get("/things", auth=BearerAuth(expired))
        assert r.status_code == 401 and "expired" in r.json()["error"]
        AuthDir(d).revoke(record.id)
        time.sleep(0.6)  # the table's re-read interval
        for cred in (ops, token):
            r = await c.get("/things", auth=BearerAuth(cred))
            assert r.status_code == 401 and "revoked" in r.json()["error"]


async def test_node_routes_take_signatures_only_and_refuse_replays(auth_dir):
    d, admin = auth_dir
    secret = KeyTable(d).secrets[0]
    async with asgi_client(make_app(d)) as c:
        r = await c.put("/chunks/c1", content=b"data", auth=BearerAuth(admin))
        assert r.status_code == 403 and "cluster node" in r.json()["error"]  # admins are not nodes
        r = await c.put("/chunks/c1", content=b"data", auth=SignedAuth(secret, "uploader-1"))
        assert r.status_code == 201 and r.json() == {"cid": "c1", "size": 4, "by": "uploader-1"}
        headers = sign_request(secret, "PUT", "/chunks/c2", b"xyz", node_id="uploader-1")
        assert (await c.put("/chunks/c2", content=b"xyz", headers=headers)).status_code == 201
        r = await c.put("/chunks/c2", content=b"xyz", headers=headers)
        assert r.status_code == 401 and "replayed" in r.json()["error"]
        r = await c.put("/chunks/c3", content=b"xyz", auth=SignedAuth(b"f" * 32, "intruder"))
        assert r.status_code == 401 and "does not verify" in r.json()["error"]
        old = sign_request(secret, "PUT", "/chunks/c4", b"", node_id="n", now=time.time() - 60)
        r = await c.put("/chunks/c4", headers=old)
        assert r.status_code == 401 and "window" in r.json()["error"]
        node_jwt = issue_node_token(secret, "metadata-1")
        r = await c.put("/chunks/c5", content=b"", auth=BearerAuth(node_jwt))
        assert r.status_code == 201 and r.json()["by"] == "metadata-1"
        # A node may do what the policy opens to nodes only: /things is for people.
        r = await c.get("/things", auth=SignedAuth(secret, "uploader-1"))
        assert r.status_code == 403


async def test_rate_limits_are_429_with_retry_after(auth_dir):
    d, admin = auth_dir
    _, viewer = AuthDir(d).create_key("viewer", "v")
    async with asgi_client(make_app(d, rate_limit_key="1/3", rate_limit_ip="0")) as c:
        codes = [(await c.get("/things", auth=BearerAuth(viewer))).status_code for _ in range(5)]
        assert codes[:3] == [200] * 3 and codes[3:] == [429, 429]
        r = await c.get("/things", auth=BearerAuth(viewer))
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["code"] == "TOO_MANY_REQUESTS" and "API key" in r.json()["error"]
        assert (await c.get("/things", auth=BearerAuth(admin))).status_code == 200  # its own bucket
    async with asgi_client(make_app(d, rate_limit_ip="1/2", rate_limit_key="0")) as c:
        codes = [(await c.get("/health")).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]  # per IP, before any credential, open routes too
        r = await c.get("/things", auth=BearerAuth(admin))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


async def test_openapi_declares_security_per_operation(auth_dir):
    d, _ = auth_dir
    async with asgi_client(make_app(d)) as c:
        doc = (await c.get("/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer" and schemes["nodeSignature"]["in"] == "header"
    paths = doc["paths"]
    assert paths["/things"]["get"]["security"] == [{"bearerAuth": []}]
    assert paths["/things"]["get"]["x-shoal-role"] == "viewer"
    assert paths["/things"]["post"]["x-shoal-role"] == "operator"
    assert {"401", "403", "429"} <= set(paths["/things"]["post"]["responses"])
    assert paths["/chunks/{cid}"]["put"]["security"] == [{"bearerAuth": []}, {"nodeSignature": []}]
    assert paths["/auth/token"]["post"]["x-shoal-role"] == "viewer"
    assert "security" not in paths["/health"]["get"] and "security" not in paths["/public"]["get"]


async def test_without_an_auth_dir_nothing_is_checked(tmp_path):
    api = Api()

    @api.get("/x")
    async def x(request: Request) -> dict:
        return {"principal": principal(request)}

    layer = AuthLayer.from_options({}, STATE_ENVELOPE)
    app = create_app(title="t", apis=layer.secure([api], lambda ep: OPERATOR), access_log=False)
    assert layer.wrap(app) is app
    async with asgi_client(app) as c:
        assert (await c.get("/x")).json() == {"principal": None}


# ---------------------------------------------------------------- start-up


def test_startup_refuses_an_open_non_loopback_bind(tmp_path, capsys, auth_dir):
    check_startup({"host": "127.0.0.1"}, "kv")
    check_startup({"host": "::1"}, "kv")
    with pytest.raises(SystemExit, match=r"refusing to serve 0\.0\.0\.0 without authentication"):
        check_startup({"host": "0.0.0.0"}, "kv")
    with pytest.raises(SystemExit, match="refusing"):
        check_startup({"host": "example.org"}, "kv")
    check_startup({"host": "0.0.0.0", "insecure_dev": True}, "kv")
    assert "INSECURE DEV MODE" in capsys.readouterr().err
    check_startup({"host": "0.0.0.0", "auth_dir": str(auth_dir[0])}, "kv")
    with pytest.raises(SystemExit, match="does not exist"):
        check_startup({"host": "127.0.0.1", "auth_dir": str(tmp_path / "none")}, "kv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="shoal auth init"):
        check_startup({"auth_dir": str(tmp_path / "empty")}, "kv")
    with pytest.raises(SystemExit, match="rate-limit-ip"):
        check_startup({"rate_limit_ip": "fast"}, "kv")


def test_add_auth_arguments_keeps_a_services_own_flag():
    parser = argparse.ArgumentParser()
    parser.add_argument("--insecure-dev", action="store_true", help="the State Service's own")
    add_auth_arguments(parser)
    args = parser.parse_args(["--auth-dir", "/d", "--rate-limit-ip", "5/10", "--insecure-dev"])
    assert (args.auth_dir, args.rate_limit_ip, args.insecure_dev) == ("/d", "5/10", True)


def test_requirement_rules():
    admin = principal_of("admin")
    with pytest.raises(ValueError):
        Requirement(None)
    assert VIEWER.allows(admin) and not NODE.allows(admin)
    assert not OPERATOR.allows(principal_of("uploader")) and OPERATOR.allows(principal_of("operator"))


def principal_of(role):
    from shoal.web.auth import Principal

    return Principal("key", "k", role)


def test_http_client_helper_signs_what_it_sends():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(handler), auth=SignedAuth(SECRET, "n1")) as c:
        c.post("http://x/a%2Fb?q=1", content=b"payload")
    verifier = RequestVerifier([SECRET])
    assert verifier.verify("POST", "/a/b", b"q=1", seen, b"payload").id == "n1"
