"""Packet delay without sch_netem: hold every packet of an NFQUEUE for a while, then accept it.

Many VM kernels (this project's CI among them) ship without the netem qdisc. iptables' NFQUEUE
target hands each packet to a userspace listener, which must give a verdict by packet id; we
give NF_ACCEPT `delay ± jitter` ms later, in arrival order (no reordering). Raw nfnetlink, so
nothing to install. Run inside a host's namespace:

    python -m shoal.testing.cluster.netdelay --queue 101 --delay-ms 200 --jitter-ms 50

It prints "bound" once the queue is bound. The iptables rule uses --queue-bypass, so if this
helper dies, packets flow undelayed rather than being dropped.
"""

from __future__ import annotations

import argparse
import heapq
import random
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_ACCEPT = 1


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def verdict(queue: int, packet_id: int) -> bytes:
    return _message(
        NFQNL_MSG_VERDICT, queue, _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
    )


def packet_ids(data: bytes) -> list[int]:
    """The packet ids in a buffer of netlink messages from the queue."""
    ids, off = [], 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            a = off + 20
            while a + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, a + 4)[0])
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return ids


def bind(sock: socket.socket, queue: int) -> None:
    cmd = _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0))
    params = _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META) + b"\0" * 3)
    for seq, attrs in ((1, cmd), (2, params)):
        sock.send(_message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK, seq))
        reply = sock.recv(65536)
        _, kind = struct.unpack_from("=IH", reply, 0)
        if kind == NLMSG_ERROR and struct.unpack_from("=i", reply, 16)[0] != 0:
            raise OSError(-struct.unpack_from("=i", reply, 16)[0], f"NFQUEUE config {seq} refused")


def serve(queue: int, delay_ms: float, jitter_ms: float, seed: int | None = None) -> None:
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((0, 0))
    bind(sock, queue)
    print("bound", queue, flush=True)
    pending: list[tuple[float, int]] = []
    last_due = 0.0
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
        ready, _, _ = select.select([sock], [], [], timeout)
        now = time.monotonic()
        if ready:
            try:
                data = sock.recv(1 << 16)
            except OSError:  # ENOBUFS: the kernel dropped some; they will be retransmitted
                data = b""
            for pid in packet_ids(data):
                due = now + (delay_ms + rng.uniform(-jitter_ms, jitter_ms)) / 1000.0
                last_due = max(last_due, due)  # keep arrival order
                heapq.heappush(pending, (last_due, pid))
        out = b""
        while pending and pending[0][0] <= time.monotonic():
            out += verdict(queue, heapq.heappop(pending)[1])
            if len(out) > 32000:
                sock.send(out)
                out = b""
        if out:
            sock.send(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queue", type=int, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    serve(a.queue, a.delay_ms, a.jitter_ms, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
