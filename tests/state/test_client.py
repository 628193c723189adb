"""The typed client: one method per endpoint, against the real app."""

from __future__ import annotations

import httpx
import pytest

from shoal.state import models as m
from shoal.state.client import StateApiError, StateClient
from shoal.state.service import create_app
from shoal.testing import asgi_client


@pytest.fixture
async def state(tmp_path):
    app = create_app({"data_dir": str(tmp_path), "insecure_dev": True, "no_fsync": True})
    async with asgi_client(app):
        async with StateClient("http://test", transport=httpx.ASGITransport(app=app)) as client:
            yield client


async def test_every_method_round_trips(state):
    assert await state.health() == "healthy"
    peer = await state.create_peer("Alice", "0x" + "a" * 40)
    assert isinstance(await state.get_peer(peer.id), m.Peer)
    c1 = await state.create_cidr("10.1.0.0/16", "one", peer.id)
    c2 = await state.create_cidr("10.2.0.0/16", "two", peer.id)
    assoc = await state.create_association("one-two", c1.id, c2.id, allow_bidirectional=True)
    assert (await state.get_association(assoc.id)).allow_bidirectional is True
    await state.update_association(assoc.id, allow_bidirectional=False)
    assert (await state.list_associations(allow_bidirectional=False)).total == 1
    dns = await state.create_dns_record("myapp.formation.cloud", "A", "192.168.100.10")
    await state.update_dns_record("myapp.formation.cloud", value="192.168.100.11", ttl=600)
    rec = await state.get_dns_record("myapp.formation.cloud")
    assert (rec.id, rec.value, rec.ttl) == (dns.id, "192.168.100.11", 600)
    inst = await state.create_instance("build-1", "web", peer.id, 2, 2048, 10, state="running")
    assert (await state.list_instances(owner=peer.id, state="running")).items[0].id == inst.id
    await state.update_instance(inst.id, state="stopped")
    assert (await state.get_instance(inst.id)).state == "stopped"
    node = await state.create_node(
        "w1", "WFmc3ixj8Ue4qZEQRTH+GYKJmUFQd2H4UBW5BJdXpXE=", "10.0.0.1:51820", 16, 32768, 1000, peer.id
    )
    await state.update_node(node.id, state="offline")
    assert (await state.get_node(node.id)).state == "offline"
    acc = await state.create_account("Alice", "0x" + "b" * 40, email="a@example.com", idempotency_key="k")
    again = await state.create_account("Alice", "0x" + "b" * 40, email="a@example.com", idempotency_key="k")
    assert again.replayed and again.id == acc.id
    await state.update_account(acc.id, email=None)
    assert (await state.get_account(acc.id)).email is None
    for kind, count in (("peers", 1), ("cidrs", 2), ("dns_records", 1), ("nodes", 1), ("accounts", 1)):
        page = await getattr(state, f"list_{kind}")()
        assert page.total == count, kind
    assert (await state.delete_association(assoc.id)).id == assoc.id
    assert (await state.delete_dns_record("myapp.formation.cloud")).id == dns.id
    for method, ident in (
        (state.delete_instance, inst.id), (state.delete_node, node.id), (state.delete_account, acc.id),
        (state.delete_cidr, c1.id), (state.delete_cidr, c2.id), (state.delete_peer, peer.id),
    ):  # fmt: skip
        assert (await method(ident)).id == ident
    with pytest.raises(StateApiError) as err:
        await state.get_peer(peer.id)
    assert (err.value.status, err.value.code) == (404, "NOT_FOUND")
