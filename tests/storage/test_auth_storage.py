"""A storage node with --auth-dir: who may read, write and vote (issue #19).

In-process (the real app and ChunkStore, through ASGI): no credentials -> 401, a human key on a
node-only route -> 403 (admin included), a cluster node -> the call works; forged, expired,
replayed and altered signatures are refused on chunk PUT and on the acceptor routes.
"""

from __future__ import annotations

import hashlib
import time

import httpx
import msgspec
import pytest

from shoal.paxos.ballot import Ballot
from shoal.paxos.messages import Prepare
from shoal.storage.nodeauth import NodeCredentials
from shoal.storage.service import create_app
from shoal.testing import asgi_client
from shoal.web.auth import AuthDir, KeyTable, SignedAuth, issue_node_token, sign_request

from .conftest import blob

MiB = 1 << 20


@pytest.fixture
def auth(tmp_path):
    d = AuthDir(tmp_path / "auth")
    keys = {"admin": d.init()}
    for role in ("viewer", "uploader", "operator"):
        keys[role] = d.create_key(role, role)[1]
    secret = KeyTable(tmp_path / "auth").secrets[0]
    return {"dir": str(tmp_path / "auth"), "keys": keys, "secret": secret, "authdir": d}


@pytest.fixture
async def client(tmp_path, auth):
    opts = {"data_dir": str(tmp_path / "node"), "port": 18998, "node_id": "node-a", "auth_dir": auth["dir"]}
    async with asgi_client(create_app(opts)) as c:
        yield c


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def signed(auth, method: str, path: str, body: bytes = b"", **kw) -> dict:
    return sign_request(auth["secret"], method, path, body, node_id="uploader-1", **kw)


def node_creds(auth) -> NodeCredentials:
    return NodeCredentials(auth["dir"], "uploader-1")


async def node_put(client, auth, chunk_id: str, data: bytes) -> httpx.Response:
    sha = "sha256:" + hashlib.sha256(data).hexdigest()
    return await client.put(
        f"/chunk/{chunk_id}",
        content=data,
        headers={"x-chunk-checksum": sha},
        auth=node_creds(auth).httpx_auth(),
    )


async def test_no_credentials_is_401_everywhere_but_health(client):
    assert (await client.get("/health")).status_code == 200
    for method, path in (
        ("GET", "/chunk/c1"),
        ("HEAD", "/chunk/c1"),
        ("PUT", "/chunk/c1"),
        ("DELETE", "/chunk/c1"),
        ("HEAD", "/ping"),
        ("GET", "/chunks"),
        ("POST", "/paxos/c1/prepare"),
        ("POST", "/paxos/c1/accept"),
        ("GET", "/paxos/c1"),
    ):
        r = await client.request(method, path, content=b"x" if method in ("PUT", "POST") else None)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["www-authenticate"].startswith("Bearer")
        if method != "HEAD":
            assert "detail" in r.json()
    assert (
        await client.get("/chunk/c1", headers=bearer("shoal_0123456789abcdef_" + "x" * 43))
    ).status_code == 401


async def test_roles_on_chunk_routes(client, auth):
    data = blob(1, 2 * MiB)
    r = await node_put(client, auth, "c1", data)
    assert r.status_code == 201, r.text
    for role in ("viewer", "uploader", "operator", "admin"):
        key = auth["keys"][role]
        r = await client.get("/chunk/c1", headers=bearer(key))
        assert r.status_code == 200 and r.content == data
        assert (await client.head("/chunk/c1", headers=bearer(key))).status_code == 200
        assert (await client.head("/ping", headers=bearer(key))).status_code == 200
        # a human key, however high, never writes, deletes or votes
        r = await client.put("/chunk/c2", content=b"y", headers=bearer(key))
        assert r.status_code == 403 and "cluster node" in r.json()["detail"]
        assert (await client.delete("/chunk/c1", headers=bearer(key))).status_code == 403
        prep = msgspec.json.encode(Prepare(0, Ballot(1, "p")))
        r = await client.post("/paxos/c1/prepare", content=prep, headers=bearer(key))
        assert r.status_code == 403
    assert (await client.get("/chunks", headers=bearer(auth["keys"]["viewer"]))).status_code == 403
    r = await client.get("/chunks", headers=bearer(auth["keys"]["operator"]))
    assert r.status_code == 200 and r.json()["chunk_ids"] == ["c1"]
    assert (await client.get("/chunk/c2", headers=bearer(auth["keys"]["viewer"]))).status_code == 404
    # a node deletes
    r = await client.delete("/chunk/c1", auth=node_creds(auth).httpx_auth())
    assert r.status_code == 204


async def test_node_credentials_of_every_kind_write(client, auth):
    data = blob(2)
    # the library signer (hashes the body itself), no X-Chunk-Checksum
    r = await client.put("/chunk/lib", content=data, auth=SignedAuth(auth["secret"], "metadata-1"))
    assert r.status_code == 201, r.text
    # a node JWT
    token = issue_node_token(auth["secret"], "repair-1")
    r = await client.put("/chunk/jwt", content=data, headers=bearer(token))
    assert r.status_code == 201, r.text
    # the hash-once signer: the checksum header is the signed hash
    r = await node_put(client, auth, "once", data)
    assert (
        r.status_code == 201 and r.headers["x-chunk-checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
    )
    who = await client.get("/auth/whoami", auth=node_creds(auth).httpx_auth())
    assert who.json()["role"] == "node" and who.json()["id"] == "uploader-1"


async def test_forged_expired_replayed_and_altered_puts_are_refused(client, auth):
    data = blob(3)
    viewer = bearer(auth["keys"]["viewer"])
    forged = sign_request(b"not the cluster secret" * 2, "PUT", "/chunk/f1", data, node_id="uploader-1")
    r = await client.put("/chunk/f1", content=data, headers=forged)
    assert r.status_code == 401 and "does not verify" in r.json()["detail"]

    old = signed(auth, "PUT", "/chunk/f2", data, now=time.time() - 60)
    r = await client.put("/chunk/f2", content=data, headers=old)
    assert r.status_code == 401 and "window" in r.json()["detail"]

    # signed for another path: the path is covered
    other = signed(auth, "PUT", "/chunk/elsewhere", data)
    assert (await client.put("/chunk/f3", content=data, headers=other)).status_code == 401

    # altered body under a valid signature of the original
    good = signed(auth, "PUT", "/chunk/f4", data)
    tampered = bytearray(data)
    tampered[100] ^= 1
    r = await client.put("/chunk/f4", content=bytes(tampered), headers=good)
    assert r.status_code == 401 and "signed hash" in r.json()["detail"]

    fresh = signed(auth, "PUT", "/chunk/f5", data)
    assert (await client.put("/chunk/f5", content=data, headers=fresh)).status_code == 201
    r = await client.put("/chunk/f5", content=data, headers=fresh)
    assert r.status_code == 401 and "replayed" in r.json()["detail"]

    for cid in ("f1", "f2", "f3", "f4"):
        assert (await client.head(f"/chunk/{cid}", headers=viewer)).status_code == 404, cid
    assert (await client.get("/chunk/f5", headers=viewer)).content == data


async def test_acceptor_refuses_forged_expired_replayed(client, auth):
    data = blob(4)
    assert (await node_put(client, auth, "pc", data)).status_code == 201
    path = "/paxos/pc/prepare"
    body = msgspec.json.encode(Prepare(0, Ballot(1, "proposer-a")))
    json_ct = {"content-type": "application/json"}

    forged = sign_request(b"x" * 32, "POST", path, body, node_id="metadata-1")
    r = await client.post(path, content=body, headers={**json_ct, **forged})
    assert r.status_code == 401

    expired = signed(auth, "POST", path, body, now=time.time() - 31)
    assert (await client.post(path, content=body, headers={**json_ct, **expired})).status_code == 401

    # the signature covers the body: a higher ballot under the old signature is refused
    good = signed(auth, "POST", path, body)
    higher = msgspec.json.encode(Prepare(0, Ballot(9, "proposer-a")))
    r = await client.post(path, content=higher, headers={**json_ct, **good})
    assert r.status_code == 401 and "body" in r.json()["detail"]

    good = signed(auth, "POST", path, body)
    r = await client.post(path, content=body, headers={**json_ct, **good})
    assert r.status_code == 200 and r.json()["ok"] is True
    r = await client.post(path, content=body, headers={**json_ct, **good})
    assert r.status_code == 401 and "replayed" in r.json()["detail"]

    state = await client.get("/paxos/pc", headers=bearer(auth["keys"]["operator"]))
    assert state.status_code == 200
    promised = state.json()["instances"][0]["promised"]
    assert promised["round"] == 1  # the refused ballot 9 was never promised


async def test_viewer_token_and_revocation_reach_chunk_reads(client, auth):
    data = blob(5)
    assert (await node_put(client, auth, "r1", data)).status_code == 201
    key = auth["keys"]["viewer"]
    tok = await client.post("/auth/token", headers=bearer(key))
    assert tok.status_code == 200
    jwt_hdr = bearer(tok.json()["access_token"])
    for _ in range(3):  # the first check, then the remembered one
        assert (await client.get("/chunk/r1", headers=bearer(key))).status_code == 200
        assert (await client.get("/chunk/r1", headers=jwt_hdr)).status_code == 200
    auth["authdir"].revoke("viewer")
    deadline = time.monotonic() + 1.5
    codes = (200, 200)
    while time.monotonic() < deadline:
        codes = (
            (await client.get("/chunk/r1", headers=bearer(key))).status_code,
            (await client.get("/chunk/r1", headers=jwt_hdr)).status_code,
        )
        if codes == (401, 401):
            break
        time.sleep(0.05)
    assert codes == (401, 401)


async def test_openapi_declares_each_routes_security(client):
    doc = (await client.get("/openapi.json")).json()
    chunk = doc["paths"]["/chunk/{chunk_id}"]
    assert chunk["get"]["x-shoal-role"] == "viewer" and chunk["get"].get("x-shoal-nodes")
    assert chunk["put"]["x-shoal-role"] == "node"
    assert {"nodeSignature": []} in chunk["put"]["security"]
    assert chunk["delete"]["x-shoal-role"] == "node"
    assert doc["paths"]["/paxos/{chunk_id}/prepare"]["post"]["x-shoal-role"] == "node"
    assert "security" not in doc["paths"]["/health"]["get"]
    assert "nodeSignature" in doc["components"]["securitySchemes"]
