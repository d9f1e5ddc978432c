#!/usr/bin/env bash
# The chaos suite (docs/testing.md "Chaos"): tests/chaos/run.sh --seed N --duration S
# --scenario NAME|all [--runs R] [--smoke] [--regressions tests/chaos/regressions.txt] [--keep] [--bin-dir build/bin] [--work-dir DIR].
# Needs root (iptables) and the loopback addresses of `archipel dev`.
cd "$(dirname "$0")/../.." || exit 2
exec python3 tests/chaos/chaos.py "$@"
