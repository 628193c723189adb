"""Unified Compute API: Docker containers and libvirt (KVM/QEMU) VMs as one kind of instance.

Layers, top down: `service` (HTTP, auth) -> `manager` (registry, locks, views) ->
`backends.docker` / `backends.kvm` (the daemons) ; `registry` keeps shoal's own instances in
shoal.kv so ids, names and labels survive restarts while state is always read live.
"""
