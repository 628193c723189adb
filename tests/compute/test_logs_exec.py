"""Issue #22: logs (docker logs; a VM's serial console log) with tail and follow, and exec in
containers (a POST answering the exit code and output)."""

from __future__ import annotations

import threading

import httpx

from .conftest import API, IMAGE, TOKEN, Api, error_of, wait_for


def test_container_logs_tail_and_follow(api: Api, service) -> None:
    script = "for i in 1 2 3; do echo line$i; done; echo oops >&2; while :; do sleep 0.2; echo tick; done"
    inst = api.create(
        name="talker", backend="docker", config={"image": IMAGE, "command": ["sh", "-c", script]}
    )
    wait_for(lambda: "tick" in api.get(f"/instances/{inst['id']}/logs").text, what="output")
    text = api.get(f"/instances/{inst['id']}/logs").text
    assert text.startswith("line1\nline2\nline3\n") and "oops" in text
    assert api.get(f"/instances/{inst['id']}/logs", params={"tail": 1}).text.count("\n") == 1
    got: list[str] = []

    def follow() -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        url = service.url + API + f"/instances/{inst['id']}/logs"
        with httpx.stream("GET", url, params={"follow": 1, "tail": 0}, headers=headers, timeout=30) as r:
            for line in r.iter_lines():
                got.append(line)
                if len(got) >= 3:
                    return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    t.join(20)
    assert got[:3] == ["tick", "tick", "tick"]  # new lines only (tail=0), as they come


def test_exec_in_a_container(api: Api) -> None:
    inst = api.create(
        name="shell",
        backend="docker",
        config={"image": IMAGE, "command": ["sleep", "3600"], "env": ["WHO=shoal"]},
    )
    r = api.post(
        f"/instances/{inst['id']}/exec", json={"command": ["sh", "-c", "echo hi $WHO; echo err >&2; exit 3"]}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"exitCode": 3, "stdout": "hi shoal\n", "stderr": "err\n"}
    error_of(api.post(f"/instances/{inst['id']}/exec", json={"command": []}), 400, "VALIDATION_ERROR")
    error_of(
        api.post(f"/instances/{inst['id']}/exec", json={"command": ["a\u0000"]}), 400, "VALIDATION_ERROR"
    )
    r = api.post(f"/instances/{inst['id']}/exec", json={"command": ["sleep", "30"], "timeout": 1})
    error_of(r, 504, "BACKEND_ERROR")
    api.put(f"/instances/{inst['id']}/stop", json={"force": True})
    error_of(
        api.post(f"/instances/{inst['id']}/exec", json={"command": ["true"]}), 409, "OPERATION_NOT_SUPPORTED"
    )
    vm = api.create(name="no-exec", backend="kvm", config={"image": "tiny"}, start=False)
    error_of(
        api.post(f"/instances/{vm['id']}/exec", json={"command": ["true"]}), 400, "OPERATION_NOT_SUPPORTED"
    )


def test_vm_console_log_tail(api: Api, service) -> None:
    """The test driver boots nothing, so the console file is written here as QEMU would."""
    vm = api.create(name="console", backend="kvm", config={"image": "tiny"})
    log = service.data_dir / "kvm" / "vms" / vm["id"] / "console.log"
    log.write_bytes(b"[    0.000000] Linux version\nbooted\nlogin:\n")
    assert api.get(f"/instances/{vm['id']}/logs").text.endswith("booted\nlogin:\n")
    assert api.get(f"/instances/{vm['id']}/logs", params={"tail": 1}).text == "login:\n"
