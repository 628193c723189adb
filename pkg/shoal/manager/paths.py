"""Paths from the configuration stay inside the manager's own directories.

A configuration is data sent over HTTP: `juicefs.mount_path: ../../../../etc` must not make
the manager mount over /etc or write a cache anywhere on the host. A path is resolved
(relative ones against the tmp directory, symlinks followed as far as they exist) and must lie
strictly below one of the allowed roots: the data directory, the tmp directory, and any
`--allow-path` the operator gave. The checkpoints directory and the files the manager keeps
itself are never a valid target.
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve(value: str, base: Path) -> Path:
    """`value` as an absolute, normalised path (relative to `base`), symlinks resolved."""
    p = Path(value)
    if not p.is_absolute():
        p = base / p
    return Path(os.path.realpath(p))


def confine(value: str, base: Path, roots: list[Path], reserved: list[Path]) -> Path:
    """The resolved path, or ValueError saying why it is refused."""
    p = resolve(value, base)
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    if not any(p != r and p.is_relative_to(r) for r in real_roots):
        allowed = ", ".join(str(r) for r in real_roots)
        raise ValueError(f"{value!r} resolves to {p}, outside the manager's directories ({allowed})")
    for r in reserved:
        rr = Path(os.path.realpath(r))
        if p == rr or p.is_relative_to(rr) or rr.is_relative_to(p):
            raise ValueError(f"{value!r} resolves to {p}, which overlaps the manager's own {rr}")
    return p
