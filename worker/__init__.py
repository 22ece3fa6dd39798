"""compliance-worker: blocks cross-border listings in Indonesia's restricted product clusters."""

__version__ = "0.1.0"
