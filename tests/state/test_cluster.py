"""Issue #25 on three real `shoal serve state` processes replicating each other: every point a
new user found, reproduced, and now holding."""

from __future__ import annotations

import secrets
import shutil
import threading
import time

import httpx
import orjson
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from shoal.state.auth.node_identity import NodeIdentity
from shoal.testing.crdt import StateCluster, listing, wait_converged
from tests.state.conftest import INSTANCE, NODE
from tests.state.test_auth import node_signed, user_signed

pytestmark = pytest.mark.slow


def login(url: str, account) -> dict[str, str]:
    ch = httpx.post(url + "/auth/challenge", json={"address": account.address}).json()
    sig = Account.sign_message(encode_defunct(text=ch["message"]), account.key).signature
    r = httpx.post(
        url + "/auth/login", json={"address": account.address, "signature": "0x" + bytes(sig).hex()}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def until(check, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def admin():
    return Account.create()


@pytest.fixture(scope="module")
def secured(tmp_path_factory, admin):
    """Three nodes with authentication on (one configured admin)."""
    c = StateCluster(
        tmp_path_factory.mktemp("secured"),
        3,
        extra_args=("--admin-address", admin.address),
        sync_interval=0.3,
    )
    c.start()
    yield c
    c.stop()


@pytest.fixture
def open_trio(tmp_path):
    c = StateCluster(tmp_path, 3, extra_args=("--insecure-dev", "--catch-up-grace", "60"), sync_interval=0.3)
    c.start()
    yield c
    c.stop()


def test_a_signed_request_replayed_to_other_nodes_is_refused(secured):
    a, b, c = secured.urls()
    alice = Account.create()
    body = orjson.dumps({**INSTANCE, "owner": alice.address})
    headers = user_signed(alice, "POST", "/instances/create", body)  # audience: any node of "shoal"
    assert httpx.post(a + "/instances/create", content=body, headers=headers).status_code == 200
    for url in (b, c, a):
        r = httpx.post(url + "/instances/create", content=body, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "REPLAYED_NONCE", r.text
    # a request signed for node a is refused by the others before its nonce matters
    key_a = httpx.get(a + "/status").json()["node_public_key"]
    pinned = user_signed(alice, "POST", "/instances/create", body, audience=f"shoal:{key_a}")
    for url in (b, c):
        r = httpx.post(url + "/instances/create", content=body, headers=pinned)
        assert r.status_code == 401 and r.json()["code"] == "WRONG_AUDIENCE"
    token = login(a, alice)
    until(lambda: all(
        httpx.get(u + "/instances", params={"owner": alice.address}, headers=token).json()["total"] == 1
        for u in (a, b, c)
    ), what="one instance on every node")  # fmt: skip


def test_replication_requests_replayed_to_another_node_are_refused(secured):
    from shoal.crdt.node import SyncRequest
    from shoal.crdt.signing import Signer
    from shoal.testing.crdt import signed_post

    a, b, _ = secured.urls()
    signer = Signer.from_pem((secured.root / "keys" / "2" / "node_identity.pem").read_bytes())
    key_a = httpx.get(a + "/replication/status").json()["node_key"]
    message = SyncRequest([], b"", 0)
    nonce = secrets.token_hex(16)
    first = signed_post(a, "/replication/sync", message, signer, audience=f"shoal:{key_a}", nonce=nonce)
    assert first.status_code == 200, first.text
    again = signed_post(a, "/replication/sync", message, signer, audience=f"shoal:{key_a}", nonce=nonce)
    assert again.status_code == 401 and again.json()["code"] == "REPLAYED_NONCE"
    elsewhere = signed_post(b, "/replication/sync", message, signer, audience=f"shoal:{key_a}")
    assert elsewhere.status_code == 401 and elsewhere.json()["code"] == "WRONG_AUDIENCE"


def test_the_host_header_never_names_the_sign_in_domain(secured):
    for url in secured.urls():
        r = httpx.post(
            url + "/auth/challenge",
            json={"address": Account.create().address},
            headers={"Host": "evil.example"},
        )
        assert r.status_code == 200
        assert "evil.example" not in r.json()["message"]
        assert r.json()["message"].startswith(url.removeprefix("http://") + " wants you to sign in")


def test_a_users_node_cannot_read_accounts(secured, admin):
    a, b, c = secured.urls()
    mallory = Account.create()
    token = login(a, mallory)
    key = NodeIdentity.generate()
    r = httpx.post(
        a + "/nodes/create",
        json={**NODE, "public_key": key.public_key, "operator_id": mallory.address},
        headers=token,
    )
    assert r.status_code == 200, r.text
    httpx.post(a + "/accounts/create", json={"name": "x", "ethereum_address": Account.create().address},
               headers=login(a, admin))  # fmt: skip
    for url in (a, b, c):
        until(lambda u=url: httpx.get(u + f"/nodes/{r.json()['node_id']}", headers=token).status_code == 200)
        got = httpx.get(url + "/accounts", headers=node_signed(key, "GET", "/accounts", b""))
        assert got.status_code == 403, got.text
        assert "accounts" not in got.json()


def test_mixed_case_owners_and_a_token_from_one_node_work_on_the_others(secured):
    a, b, c = secured.urls()
    alice = Account.create()
    token = login(a, alice)  # issued by node a
    lower = alice.address.lower()
    created = httpx.post(b + "/instances/create", json={**INSTANCE, "owner": lower}, headers=token)
    assert created.status_code == 200, created.text  # node b accepts a's token
    iid = created.json()["instance_id"]
    until(lambda: httpx.get(c + f"/instances/{iid}", headers=token).status_code == 200)
    assert httpx.get(c + f"/instances/{iid}", headers=token).json()["owner"] == alice.address  # EIP-55
    r = httpx.post(c + "/instances/update", json={"id": iid, "name": "renamed"}, headers=token)
    assert r.status_code == 200, r.text  # the owner check matches whatever case was sent
    httpx.post(c + "/instances/create", json={**INSTANCE, "owner": alice.address}, headers=token)
    for asked in (lower, alice.address, "0x" + alice.address[2:].upper()):
        until(lambda q=asked: httpx.get(a + "/instances", params={"owner": q}, headers=token).json()["total"] == 2,
              what=f"owner={asked}")  # fmt: skip
    assert httpx.post(a + "/auth/logout", headers=token).json()["success"] is True
    until(lambda: httpx.get(b + "/auth/whoami", headers=token).status_code == 401, what="logout seen on b")


def test_a_retried_idempotency_key_on_another_node_answers_the_first_result(secured):
    a, b, c = secured.urls()
    alice = Account.create()
    token = login(a, alice)
    headers = {**token, "Idempotency-Key": secrets.token_hex(8)}
    body = {**INSTANCE, "owner": alice.address}
    first = httpx.post(a + "/instances/create", json=body, headers=headers)
    assert first.status_code == 200
    iid = first.json()["instance_id"]
    until(lambda: httpx.get(b + f"/instances/{iid}", headers=token).status_code == 200)
    for url in (b, c):
        again = httpx.post(url + "/instances/create", json=body, headers=headers)
        assert again.status_code == 200 and again.json() == first.json(), again.text
        assert again.headers.get("idempotent-replayed") == "true"
    listed = httpx.get(c + "/instances", params={"owner": alice.address}, headers=token).json()
    assert listed["total"] == 1


def test_concurrent_creates_of_one_domain_give_one_200_and_two_409(open_trio):
    urls = open_trio.urls()
    for trial in range(3):
        domain = f"app{trial}.example.com"
        results: list[httpx.Response] = []
        barrier = threading.Barrier(3)

        def create(url: str, d: str = domain, barrier=barrier, results=results) -> None:
            barrier.wait()
            body = {"domain": d, "record_type": "A", "value": "192.0.2.1", "ttl": 60}
            results.append(httpx.post(url + "/dns/create", json=body, timeout=30))

        threads = [threading.Thread(target=create, args=(u,)) for u in urls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in results)
        assert codes == [200, 409, 409], [r.text for r in results]
        winner = next(r for r in results if r.status_code == 200).json()["dns_id"]
        for u in urls:
            until(lambda u=u, d=domain: httpx.get(f"{u}/dns/{d}").status_code == 200)
            assert httpx.get(f"{u}/dns/{domain}").json()["id"] == winner
    time.sleep(1.0)  # and it stays: nothing acknowledged vanishes later
    state = wait_converged(urls, timeout=15, min_items=3)
    assert len(state["dns"]) == 3


def test_concurrent_updates_of_different_fields_both_survive(open_trio):
    a, b, c = open_trio.urls()
    for trial in range(10):
        created = httpx.post(a + "/instances/create", json={**INSTANCE, "name": f"i{trial}"}).json()
        iid = created["instance_id"]
        until(lambda i=iid: httpx.get(f"{b}/instances/{i}").status_code == 200)
        barrier = threading.Barrier(2)
        codes = []

        def update(url: str, change: dict, i: str = iid, barrier=barrier, codes=codes) -> None:
            barrier.wait()
            codes.append(httpx.post(url + "/instances/update", json={"id": i, **change}).status_code)

        threads = [
            threading.Thread(target=update, args=(a, {"name": f"renamed-{trial}"})),
            threading.Thread(target=update, args=(b, {"vcpu_count": 7})),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == [200, 200]
        for u in (a, b, c):
            until(lambda u=u, i=iid, t=trial: (d := httpx.get(f"{u}/instances/{i}").json())["name"] == f"renamed-{t}"
                  and d["vcpu_count"] == 7, what=f"both changes on {u}")  # fmt: skip


def test_a_wiped_node_is_catching_up_until_it_equals_its_peers(open_trio):
    urls = open_trio.urls()
    for j in range(30):
        r = httpx.post(urls[0] + "/cidrs/create", json={"cidr": f"10.9.{j}.0/24", "name": "c", "owner": "o"})
        assert r.status_code == 200, r.text
    before = wait_converged(urls, timeout=20, min_items=30)
    open_trio.nodes[0].stop()
    open_trio.nodes[1].stop()
    open_trio.nodes[2].kill()
    shutil.rmtree(open_trio.nodes[2].data_dir)
    open_trio.nodes[2].start()  # empty, its peers down: it cannot know what it misses
    health = httpx.get(urls[2] + "/health").json()
    assert health["status"] == "catching_up" and health["progress"]["peers_caught_up"] == 0
    r = httpx.get(urls[2] + "/cidrs")
    assert r.status_code == 503 and r.json()["code"] == "CATCHING_UP"
    r = httpx.post(urls[2] + "/cidrs/create", json={"cidr": "10.9.0.0/24", "name": "dup", "owner": "o"})
    assert r.status_code == 503 and r.json()["code"] == "CATCHING_UP"  # never a duplicate create
    open_trio.nodes[0].start()
    open_trio.nodes[1].start()
    open_trio.wait_ready(nodes=[2])
    assert listing(urls[2]) == before
