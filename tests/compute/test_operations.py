"""Issue #22, operations as in Incus: 202 + an operation for long actions (`?async=1` or
`Prefer: respond-async`), waiting with `?timeout=`, cancelling, and the SSE event stream."""

from __future__ import annotations

import json
import threading

import httpx

from .conftest import API, IMAGE, TOKEN, Api, error_of

IDLE = ["sleep", "3600"]  # PID 1 ignores SIGTERM: a graceful stop waits its whole timeout


def test_create_async_and_wait(api: Api, docker_http: httpx.Client) -> None:
    body = {"name": "op-made", "backend": "docker", "config": {"image": IMAGE, "command": IDLE}}
    r = api.post("/instances", params={"async": 1}, json=body)
    assert r.status_code == 202, r.text
    op = r.json()
    assert r.headers["location"] == f"{API}/operations/{op['id']}"
    assert op["status"] in ("running", "success") and op["action"] == "create"
    done = api.get(f"/operations/{op['id']}", params={"timeout": 30}).json()
    assert (done["status"], done["statusCode"]) == ("success", 200)
    inst = done["result"]
    assert inst["name"] == "op-made" and inst["state"] == "running"
    assert done["resources"]["instances"] == [inst["id"]]
    assert any(o["id"] == op["id"] for o in api.get("/operations").json()["operations"])
    # a failed async create: the operation says why, and nothing is left
    r = api.post(
        "/instances",
        headers={"Prefer": "respond-async"},
        json={**body, "name": "op-bad", "config": {"image": IMAGE, "command": ["/nope"]}},
    )
    assert r.status_code == 202
    failed = api.get(f"/operations/{r.json()['id']}", params={"timeout": 30}).json()
    assert failed["status"] == "failure" and failed["error"]["code"] == "BACKEND_ERROR"
    error_of(api.get("/instances/name/op-bad"), 404, "INSTANCE_NOT_FOUND")
    # delete, async
    r = api.delete(f"/instances/{inst['id']}", params={"force": "true", "async": "1"})
    assert r.status_code == 202
    assert api.get(f"/operations/{r.json()['id']}", params={"timeout": 30}).json()["status"] == "success"
    error_of(api.get(f"/instances/{inst['id']}"), 404, "INSTANCE_NOT_FOUND")
    # the synchronous form is unchanged, unknown operations are 404
    assert api.post("/instances", json={**body, "name": "sync"}).status_code == 201
    error_of(api.get("/operations/nope"), 404, "OPERATION_NOT_FOUND")
    error_of(api.put("/instances/inst-000000000000/start", params={"async": 1}), 404, "INSTANCE_NOT_FOUND")


def test_graceful_stop_as_an_operation_wait_and_cancel(api: Api) -> None:
    inst = api.create(name="slow-stop", backend="docker", config={"image": IMAGE, "command": IDLE})
    r = api.put(f"/instances/{inst['id']}/stop", params={"async": 1}, json={"timeout": 60})
    assert r.status_code == 202  # answered at once, not after the 60 s grace period
    op = r.json()
    waited = api.get(f"/operations/{op['id']}", params={"timeout": 0.5}).json()
    assert waited["status"] == "running" and waited["mayCancel"] is True
    cancelled = api.delete(f"/operations/{op['id']}").json()
    assert cancelled["status"] == "cancelled" and cancelled["statusCode"] == 401
    error_of(api.delete(f"/operations/{op['id']}"), 409, "OPERATION_NOT_SUPPORTED")
    # the instance's lock was released: a forced stop goes through now
    assert api.put(f"/instances/{inst['id']}/stop", json={"force": True}).json()["state"] == "stopped"


def test_events_stream_lifecycle_and_operations(api: Api, service) -> None:
    seen: list[dict] = []
    ready = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.stream("GET", service.url + API + "/events", headers=headers, timeout=60) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith(": connected"):
                    ready.set()
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1]["metadata"].get("action") == "instance-deleted":
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(20)
    inst = api.create(name="evented", backend="docker", config={"image": IMAGE, "command": IDLE})
    api.put(f"/instances/{inst['id']}/stop", json={"force": True})
    r = api.put(f"/instances/{inst['id']}/start", params={"async": 1})
    api.get(f"/operations/{r.json()['id']}", params={"timeout": 30})
    api.delete(f"/instances/{inst['id']}", params={"force": "true"})
    t.join(30)
    actions = [e["metadata"]["action"] for e in seen if e["type"] == "lifecycle"]
    assert actions == ["instance-created", "instance-stopped", "instance-started", "instance-deleted"], (
        actions
    )
    assert all(e["metadata"]["instance"]["id"] == inst["id"] for e in seen if e["type"] == "lifecycle")
    ops = [e["metadata"] for e in seen if e["type"] == "operation"]
    assert [o["status"] for o in ops] == ["running", "success"] and ops[0]["action"] == "start"
