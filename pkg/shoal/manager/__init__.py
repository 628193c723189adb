"""shoal.manager: the State Manager (process supervision, config, SQLite + litestream, JuiceFS, checkpoints)."""
