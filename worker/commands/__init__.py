"""The command line: `compliance-worker` and each of its commands."""
