"""A real multi-host cluster for tests: hosts as network namespaces, faults, histories, checkers.

- net: hosts (namespaces on a private bridge), partitions, loss, delay, pause, kill -9
- services: a 3-member etcd and shoal services placed on hosts (`shoal serve ... --host <ip>`)
- nemesis: a seeded, printed fault schedule
- history / clients: operations recorded as invocation and completion (ok, fail, unknown)
- checkers: linearizability (per key), no acknowledged write lost, byte-exact plays, equal State nodes
- scenarios: one workload under one kind of fault, checked (tests/cluster, scripts/chaos)
See docs/testing.md.
"""
