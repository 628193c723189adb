"""shoal.state: the State Service (port 3004) — peers, CIDRs, associations, DNS records,
instances, nodes and accounts over shoal.kv, with Ethereum-signature and node-identity auth.

Every write goes through `StateStore.apply`, which produces the `Operation` records that
replication between nodes builds on. See docs/state.md.
"""

from shoal.state.store import Operation, StateStore, Write

__all__ = ["Operation", "StateStore", "Write"]
