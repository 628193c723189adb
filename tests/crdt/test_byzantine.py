"""A Byzantine node with a valid, trusted key attacks a three-node cluster; honest nodes stay identical."""

from __future__ import annotations

import base64
import os
import threading
import time

import httpx
import msgspec
import orjson
import pytest

from shoal import _native
from shoal.crdt.node import FetchReply, FetchRequest, PushReply, PushRequest, SyncRequest
from shoal.crdt.signing import Signer
from shoal.testing.crdt import StateCluster, signed_post, wait_converged

pytestmark = pytest.mark.slow
core = _native.load("crdt")


def heads(url: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in httpx.get(url + "/replication/status").json()["heads"]]


def cidr_doc(entity_id: str, name: str, cidr: str) -> bytes:
    now = int(time.time())
    doc = {"id": entity_id, "cidr": cidr, "name": name, "owner": "byz", "created_at": now, "updated_at": now}
    return orjson.dumps(doc)


def make(
    signer: Signer, hlc: int, deps, kind: str, key: str, value: bytes | None, author: bytes | None = None
):
    blob = core.encode(author or signer.public, hlc, deps, kind, key, "byzantine", value)
    return signer.sign_op(core.digest(blob)) + blob


def push(url: str, frames: list[bytes], signer: Signer) -> PushReply:
    r = signed_post(url, "/replication/push", PushRequest(frames), signer)
    assert r.status_code == 200, r.text
    return msgspec.msgpack.decode(r.content, type=PushReply)


def test_byzantine_node_cannot_split_or_stop_honest_nodes(tmp_path):
    byz = Signer.generate()
    cluster = StateCluster(tmp_path, 3, sync_interval=0.3, trust_extra=(byz.public_b64,))
    with cluster:
        urls = cluster.urls()
        for i, u in enumerate(urls):
            r = httpx.post(
                u + "/cidrs/create", json={"cidr": f"10.{i}.0.0/24", "name": "honest", "owner": "o"}
            )
            assert r.status_code == 200
        wait_converged(urls, timeout=15, min_items=3)
        base = heads(urls[0])
        hlc = (int(time.time() * 1000)) << 16
        node2 = base64.b64decode(cluster.keys[2])

        # 1. forged: claims to be node 2, signature by nobody
        blob = core.encode(
            node2, hlc, base, "cidr", "cidr-forged", "x", cidr_doc("cidr-forged", "f", "10.66.0.0/24")
        )
        forged = os.urandom(64) + blob
        # 2. re-signed: node 2's author field, signed with the Byzantine key
        resigned = byz.sign_op(core.digest(blob)) + blob
        # 3. malformed: garbage, a value that is not a document, an unknown kind, a clock before its deps
        garbage = os.urandom(200)
        not_doc = make(byz, hlc + 1, base, "cidr", "cidr-x", b'{"id": "cidr-x", "evil": true}')
        bad_kind = make(byz, hlc + 2, base, "wallet", "w1", b"{}")
        old_clock = make(byz, 5, base, "cidr", "cidr-old", cidr_doc("cidr-old", "o", "10.67.0.0/24"))
        future = make(
            byz, hlc + (3600_000 << 16), base, "cidr", "cidr-fut", cidr_doc("cidr-fut", "t", "10.68.0.0/24")
        )
        reply = push(urls[0], [forged, resigned, garbage, not_doc, bad_kind, old_clock, future], byz)
        assert reply.applied == 0 and reply.rejected == 7

        # 4. equivocation: two valid, conflicting ops with the same past, one to each of two nodes
        eq_a = make(byz, hlc + 10, base, "cidr", "cidr-eq", cidr_doc("cidr-eq", "A", "10.69.0.0/24"))
        eq_b = make(byz, hlc + 10, base, "cidr", "cidr-eq", cidr_doc("cidr-eq", "B", "10.69.0.0/24"))
        assert push(urls[0], [eq_a], byz).applied == 1
        assert push(urls[1], [eq_b], byz).applied == 1

        # 5. a flood of ops whose dependencies exist nowhere, while honest clients keep writing
        flood = [make(byz, hlc + 20 + i, [os.urandom(32)], "cidr", f"cidr-fl{i}", None) for i in range(3000)]
        errors: list[str] = []

        def honest_writes() -> None:
            for j in range(20):
                r = httpx.post(
                    urls[2] + "/cidrs/create",
                    json={"cidr": f"10.99.{j}.0/24", "name": "h", "owner": "o"},
                    timeout=10,
                )
                if r.status_code != 200:
                    errors.append(r.text)

        writer = threading.Thread(target=honest_writes)
        writer.start()
        for start in range(0, len(flood), 500):
            push(urls[start // 500 % 2], flood[start : start + 500], byz)
        writer.join()
        assert not errors

        # 6. requests without a trusted signature are refused in the State envelope
        stranger = Signer.generate()
        r = signed_post(urls[0], "/replication/push", PushRequest([eq_a]), stranger)
        assert r.status_code == 403 and r.json()["code"] == "UNTRUSTED_NODE"
        r = httpx.post(urls[0] + "/replication/push", content=b"\x80")
        assert r.status_code == 401 and r.json()["success"] is False
        r = signed_post(urls[0], "/replication/sync", b"\xc1not msgpack", byz)
        assert r.status_code == 400 and r.json()["code"] == "BAD_MESSAGE"
        r = signed_post(urls[0], "/replication/sync", SyncRequest([], b"\x00", 0), byz)
        assert r.status_code == 400
        r = signed_post(urls[0], "/replication/fetch", FetchRequest([b"short", os.urandom(32)]), byz)
        assert r.status_code == 200 and msgspec.msgpack.decode(r.content, type=FetchReply).ops == []

        state = wait_converged(urls, timeout=20, min_items=24)
        names = {c["name"] for c in state["cidrs"] if c["id"] == "cidr-eq"}
        assert len(names) == 1  # one winner of the equivocation, everywhere
        ids = {c["id"] for c in state["cidrs"]}
        assert not ids & {"cidr-forged", "cidr-x", "cidr-old", "cidr-fut"}
        statuses = [httpx.get(u + "/replication/status").json() for u in urls]
        assert statuses[0]["rejected_by_reason"]["bad signature"] == 2
        assert statuses[0]["rejected_by_reason"]["malformed value"] == 1
        assert statuses[0]["rejected_by_reason"]["clock too far ahead"] == 1
        assert all(s["buffered"] <= 10_000 for s in statuses)  # at most half the buffer per author
        assert len({s["ops"] for s in statuses}) == 1
        assert all(httpx.get(u + "/health").status_code == 200 for u in urls)
