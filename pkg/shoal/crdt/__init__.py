"""BFT-CRDT replication of the State Service (Kleppmann 2022): signed, hash-linked operations,
last-writer-wins registers, push + anti-entropy between nodes. See docs/crdt.md."""
