"""shoal: a small self-hosted cloud substrate in one Python package."""

__version__ = "0.1.0"
