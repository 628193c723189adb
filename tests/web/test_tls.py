"""Every service can serve HTTPS itself (--tls-cert/--tls-key), under granian and under uvicorn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shoal.testing import ServiceProcess, free_port
from shoal.web.tls import client_verify


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl, as an operator would make one)."""
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "node.crt", d / "node.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return crt, key


@pytest.mark.parametrize(
    ("service", "args"), [("kv", []), ("storage", ["--node-id", "n1"])], ids=["granian", "uvicorn"]
)
def test_https_served_and_verified(
    tmp_path: Path, cert: tuple[Path, Path], service: str, args: list[str]
) -> None:
    crt, key = cert
    tls = ["--tls-cert", str(crt), "--tls-key", str(key)]
    with ServiceProcess(service, tmp_path / "data", [*args, *tls], tls_ca=crt) as svc:
        assert svc.url.startswith("https://")
        assert httpx.get(svc.url + "/health", verify=client_verify(str(crt)), timeout=5).status_code == 200
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA refuses it
            httpx.get(svc.url + "/health", timeout=5)
        with pytest.raises(httpx.HTTPError):  # and plain HTTP is not served on that port
            httpx.get(svc.url.replace("https://", "http://") + "/health", timeout=5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "X"], "go together"),
        (["--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], "cannot load"),
    ],
)
def test_bad_tls_flags_are_refused_before_start(tmp_path: Path, flags: list[str], message: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "shoal",
        "serve",
        "kv",
        "--port",
        str(free_port()),
        "--data-dir",
        str(tmp_path),
        *flags,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and message in done.stderr, done.stderr
