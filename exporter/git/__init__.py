"""Plain git: CI fleets' shared reference mirrors (config, command, refs, poller, collector) and ref-level
verification of Bitbucket mirrors (verify.py)."""
