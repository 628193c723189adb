"""shoal.metadata: videos, manifests, node health, ChunkPaxos placement and adaptive redundancy.

The HTTP service is `shoal serve metadata` (service.py); all state lives in shoal.kv.
"""
