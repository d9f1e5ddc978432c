#!/usr/bin/env bash
# Run one libFuzzer target for a number of seconds, starting from its seed
# corpus (tests/fuzz/corpus/<name>/) and keeping new inputs in a scratch copy.
# usage: tests/fuzz/run.sh BUILD/fuzz/fuzz_NAME SECONDS
set -euo pipefail
bin=$1
secs=${2:-20}
name=$(basename "$bin")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/ap-fuzz-$name.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus"
if [ -d "$here/corpus/$name" ]; then
  cp -r "$here/corpus/$name/." "$work/corpus/"
fi
# -rss_limit_mb bounds memory; a crash leaves its input in the current dir.
exec "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 \
  -print_final_stats=1 "$work/corpus"
