"""What a create may take from the host: nothing, unless the node's operator allowed it (issue #19).

A container with `volumes: ["/:/host"]`, `networkMode: host`, `privileged: true` or a host
device reads and changes the host itself, so any operator key would be root on every compute
node. Such requests are refused with 403 FORBIDDEN unless the node was started with an explicit
allow-list:

- `--allow-host-path PREFIX` (repeatable): bind mounts whose source, with symlinks resolved,
  lies under one of the prefixes (also resolved). Named Docker volumes are not host paths.
- `--allow-host-network`: `networkMode: host`.
- `--allow-privileged`: `privileged: true` and `capAdd`.
- `--allow-device PATH` (repeatable): `devices` entries whose host side is one of these paths.

Labels under `shoal.` are shoal's own (it finds its containers and domains by them), so a
request may not set them (400 VALIDATION_ERROR).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from shoal.compute.errors import HostAccessForbidden, ValidationFailed
from shoal.compute.models import CreateInstance, InstanceConfig, Metadata

RESERVED_LABEL_PREFIX = "shoal."


def _resolve(path: str) -> str:
    return os.path.realpath(os.path.normpath(path))


def is_host_path(source: str) -> bool:
    """Docker reads a bind source as a host path when it is one; a bare name is a named volume."""
    return source.startswith(("/", ".", "~")) or "/" in source


@dataclass(frozen=True)
class HostAccess:
    """The node's allow-list (empty: nothing of the host is reachable)."""

    paths: tuple[str, ...] = ()
    network: bool = False
    privileged: bool = False
    devices: tuple[str, ...] = ()
    _resolved: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> HostAccess:
        paths = tuple(p for p in options.get("allow_host_path") or [] if p)
        return cls(
            paths=paths,
            network=bool(options.get("allow_host_network")),
            privileged=bool(options.get("allow_privileged")),
            devices=tuple(_resolve(d) for d in options.get("allow_device") or [] if d),
            _resolved=tuple(_resolve(p) for p in paths),
        )

    def path_allowed(self, source: str) -> bool:
        real = _resolve(source)
        return any(real == p or real.startswith(p.rstrip("/") + "/") for p in self._resolved)

    def check_create(self, spec: CreateInstance) -> None:
        check_labels(spec.metadata)
        self.check_config(spec.config)

    def check_config(self, cfg: InstanceConfig) -> None:
        for vol in cfg.volumes or []:
            source = vol.split(":", 1)[0]
            if is_host_path(source) and not self.path_allowed(source):
                raise HostAccessForbidden(
                    f"volume {vol!r} mounts host path {source!r}; this node allows no host paths"
                    + (f" outside {', '.join(self.paths)}" if self.paths else "")
                    + " (start it with --allow-host-path PREFIX)",
                    {"field": "config.volumes", "value": vol, "allowedPrefixes": list(self.paths)},
                )
        if (cfg.network_mode or "").lower() == "host" and not self.network:
            raise HostAccessForbidden(
                "networkMode host shares the host's network stack; this node does not allow it "
                "(start it with --allow-host-network)",
                {"field": "config.networkMode", "value": cfg.network_mode},
            )
        if cfg.privileged and not self.privileged:
            raise HostAccessForbidden(
                "privileged containers control the host; this node does not allow them "
                "(start it with --allow-privileged)",
                {"field": "config.privileged"},
            )
        if cfg.cap_add and not self.privileged:
            raise HostAccessForbidden(
                "added capabilities widen what a container may do to the host; this node does not "
                "allow them (start it with --allow-privileged)",
                {"field": "config.capAdd", "value": list(cfg.cap_add)},
            )
        for dev in cfg.devices or []:
            host = dev.split(":", 1)[0]
            if _resolve(host) not in self.devices:
                raise HostAccessForbidden(
                    f"device {host!r} is a host device this node does not allow "
                    "(start it with --allow-device PATH)",
                    {"field": "config.devices", "value": dev, "allowedDevices": list(self.devices)},
                )


def check_labels(metadata: Metadata | None) -> None:
    """400 for labels in shoal's reserved `shoal.` namespace (or with a NUL, which daemons refuse)."""
    if metadata is None:
        return
    for key, value in metadata.labels.items():
        if key.lower().startswith(RESERVED_LABEL_PREFIX):
            raise ValidationFailed(
                f"label {key!r}: keys starting with 'shoal.' are reserved for shoal itself",
                {"field": "metadata.labels", "label": key},
            )
        if "\x00" in key or "\x00" in value:
            raise ValidationFailed(
                f"label {key!r} contains a NUL character", {"field": "metadata.labels", "label": key}
            )
