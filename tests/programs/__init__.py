"""Real programs (issue 16, "Acceptance with real programs"): Debian's
redis-server and nginx, installed by scripts/setup.sh, each started by hand
in the foreground from a config in a temporary directory, dumped and
restored, and checked through its own protocol."""
