"""A port bound by another live process is refused, with that process's pid.

granian's workers each bind with SO_REUSEPORT, so a second, unrelated start on the same port
would bind beside the first and the kernel would split connections between them. A probe bind
without SO_REUSEPORT fails while any socket holds the port; SO_REUSEADDR lets it pass over
connections in TIME_WAIT. Workers of one service still share the port (they bind after this).
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path


class PortInUse(RuntimeError):
    """Another process listens on the port."""


def check_free(host: str, port: int) -> None:
    """Raise PortInUse (naming the holder where /proc tells) if (host, port) cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PortInUse(f"cannot bind {host}:{port}: {exc.strerror}") from None
            holders = listeners(port)
            who = ", ".join(f"pid {pid} ({cmd})" for pid, cmd in holders) or "another process"
            raise PortInUse(f"port {port} on {host} is already in use by {who}") from None


def listeners(port: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes with a listening TCP socket on `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    found = []
    if not inodes:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
            if any(_readlink(f"/proc/{entry.name}/fd/{fd}") in inodes for fd in fds):
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                found.append((int(entry.name), cmd[:120]))
        except OSError:
            continue
    return found


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""
