"""python -m shoal.crdt node-key --dir DIR: create (if absent) and print a node's public key.

Run it before starting a cluster, so every node can be given the others' keys (--trust-node).
"""

from __future__ import annotations

import argparse
import sys

from shoal.crdt.node import load_signer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.crdt")
    sub = parser.add_subparsers(dest="command", required=True)
    key = sub.add_parser(
        "node-key", help="create (if absent) and print the node key in DIR/node_identity.pem"
    )
    key.add_argument("--dir", required=True, help="the --node-key-dir (or data dir) of the node")
    args = parser.parse_args(argv)
    print(load_signer({"node_key_dir": args.dir}, args.dir).public_b64)
    return 0


if __name__ == "__main__":
    sys.exit(main())
