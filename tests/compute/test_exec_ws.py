"""Issue #22: exec as a WebSocket (GET .../instances/{id}/exec/ws?command=...) on the private
dockerd: frames to stdin, prefixed output frames, a final exit frame; operators only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from shoal.testing import ServiceProcess
from shoal.web.auth import AuthDir

from .conftest import API, IMAGE, TOKEN, Api, start_service


def ws_url(service: ServiceProcess, instance_id: str) -> str:
    return service.url.replace("http://", "ws://") + API + f"/instances/{instance_id}/exec/ws"


async def session(
    url: str, command: list[str], token: str | None, send: list[str | bytes] = (), **params: Any
) -> dict[str, Any]:
    """Connect, send `send` (an empty frame closes stdin), read to the close; what came back."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    query = [("command", c) for c in command] + [(k, str(v)) for k, v in params.items()]
    out: dict[str, Any] = {"stdout": b"", "stderr": b"", "texts": [], "close": None}
    timeout = aiohttp.ClientWSTimeout(ws_receive=60)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, params=query, headers=headers, timeout=timeout) as ws:
            for frame in send:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    key = {1: "stdout", 2: "stderr"}[msg.data[0]]
                    out[key] += msg.data[1:]
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    out["texts"].append(json.loads(msg.data))
        out["close"] = ws.close_code
    return out


def run(url: str, command: list[str], token: str | None = TOKEN, send: list = (), **params: Any) -> dict:
    return asyncio.run(session(url, command, token, list(send), **params))


@pytest.fixture
def box(api: Api) -> dict:
    return api.create(name="ws-box", backend="docker", config={"image": IMAGE, "command": ["sleep", "3600"]})


def test_cat_echoes_stdin_and_exits_zero(service: ServiceProcess, box: dict) -> None:
    url = ws_url(service, box["id"])
    out = run(url, ["cat"], send=["hello ", b"binary\x00\xff\n", ""])  # "" closes stdin: cat ends
    assert out["stdout"] == b"hello binary\x00\xff\n"
    assert out["stderr"] == b""
    assert out["texts"] == [{"type": "exit", "exitCode": 0}]
    assert out["close"] == 1000


def test_exit_code_and_separate_streams(service: ServiceProcess, box: dict) -> None:
    url = ws_url(service, box["id"])
    out = run(url, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (out["stdout"], out["stderr"]) == (b"out\n", b"err\n")
    assert out["texts"] == [{"type": "exit", "exitCode": 3}]
    assert out["close"] == 1000


def test_timeout_ends_the_session_with_the_reason(service: ServiceProcess, box: dict) -> None:
    out = run(ws_url(service, box["id"]), ["sleep", "30"], timeout=1)
    assert out["texts"][-1]["type"] == "error" and out["texts"][-1]["error"]["code"] == "BACKEND_ERROR"
    assert out["close"] == 4504


def test_no_or_wrong_credential_is_refused(service: ServiceProcess, api: Api, box: dict) -> None:
    url = ws_url(service, box["id"])
    for token in (None, "not-the-token"):
        out = run(url, ["sh", "-c", "touch /tmp/ran"], token=token)
        assert out["close"] == 4401
        assert out["texts"][0]["error"]["code"] == "UNAUTHORIZED"
        assert out["stdout"] == b""
    # nothing ran: the refusal came before any exec was created
    check = api.post(f"/instances/{box['id']}/exec", json={"command": ["test", "-e", "/tmp/ran"]})
    assert check.json()["exitCode"] == 1


def test_vm_and_bad_requests_are_refused_with_a_reason(service: ServiceProcess, api: Api, box: dict) -> None:
    vm = api.create(name="ws-vm", backend="kvm", config={"image": "tiny"}, start=False)
    out = run(ws_url(service, vm["id"]), ["sh"])
    assert out["close"] == 4400  # as the POST answers: 400 OPERATION_NOT_SUPPORTED
    error = out["texts"][0]["error"]
    assert error["code"] == "OPERATION_NOT_SUPPORTED" and "containers" in error["message"]
    assert error["details"] == {"backend": "kvm", "operation": "exec"}
    out = run(ws_url(service, box["id"]), [])
    assert out["close"] == 4400 and out["texts"][0]["error"]["code"] == "VALIDATION_ERROR"
    out = run(ws_url(service, "no-such-instance"), ["true"])
    assert out["close"] == 4404
    api.put(f"/instances/{box['id']}/stop", json={"force": True})
    out = run(ws_url(service, box["id"]), ["true"])
    assert out["close"] == 4409 and "stopped" in out["texts"][0]["error"]["message"]


@pytest.fixture(scope="module")
def secured(dockerd, templates, tmp_path_factory) -> Iterator[tuple[ServiceProcess, dict]]:
    d = tmp_path_factory.mktemp("auth-ws") / "auth"
    AuthDir(d).init()
    _, viewer = AuthDir(d).create_key("viewer", "reader")
    _, operator = AuthDir(d).create_key("operator", "ops")
    svc = start_service(
        tmp_path_factory.mktemp("compute-ws") / "data",
        dockerd.url,
        "test:///default",
        templates,
        ["--auth-dir", str(d)],
    )
    yield svc, {"viewer": viewer, "operator": operator}
    svc.stop()


def test_auth_dir_needs_an_operator(secured: tuple[ServiceProcess, dict]) -> None:
    svc, keys = secured
    ops = Api(svc.url, keys["operator"])
    try:
        box = ops.create(
            name="ws-auth", backend="docker", config={"image": IMAGE, "command": ["sleep", "3600"]}
        )
        url = ws_url(svc, box["id"])
        out = run(url, ["echo", "hi"], token=keys["viewer"])
        assert out["close"] == 4403 and out["texts"][0]["error"]["code"] == "FORBIDDEN"
        assert out["stdout"] == b""
        assert run(url, ["echo", "hi"], token=None)["close"] == 4401
        assert run(url, ["echo", "hi"], token="shoal_bad_key")["close"] == 4401
        for token in (keys["operator"], TOKEN):  # an API key, and the --token (an operator)
            out = run(url, ["echo", "hi"], token=token)
            assert out["stdout"] == b"hi\n" and out["texts"] == [{"type": "exit", "exitCode": 0}]
        ops.delete(f"/instances/{box['id']}", params={"force": "true"})
    finally:
        ops.close()
