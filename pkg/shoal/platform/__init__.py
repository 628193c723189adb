"""Platform-wide commands and tables: the service registry, `shoal up`/`status`/`demo`, the layout, nginx config, doctor."""
