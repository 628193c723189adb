"""Sign in from a shell: prints a bearer token for curl.

    TOKEN=$(python -m shoal.state.login http://127.0.0.1:3004 --key "$KEY")

The key is a secp256k1 private key in hex (or SHOAL_ETH_KEY); the signature is made locally,
the key never leaves this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from shoal.state.client import StateApiError, StateClient


async def _login(url: str, key: str) -> str:
    async with StateClient(url, account=key) as state:
        return (await state.login()).token


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shoal.state.login", description=__doc__.split("\n")[0])
    ap.add_argument("url", help="State Service base URL, e.g. http://127.0.0.1:3004")
    ap.add_argument(
        "--key", default=os.environ.get("SHOAL_ETH_KEY"), help="private key hex (or SHOAL_ETH_KEY)"
    )
    args = ap.parse_args(argv)
    if not args.key:
        ap.error("a private key is needed: --key or SHOAL_ETH_KEY")
    try:
        print(asyncio.run(_login(args.url, args.key)))
    except StateApiError as exc:
        print(f"login failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
