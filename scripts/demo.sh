#!/usr/bin/env bash
# Installs engine, then dumps a counting process and restores it: the same
# PID counts on from where it was.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp /tmp/engine-setup.XXXXXX.log)
scripts/setup.sh >"$log" 2>&1 || { cat "$log"; exit 1; }
work=$(mktemp -d /tmp/engine-demo.XXXXXX)
gcc -O2 -o "$work/count" scripts/demo_count.c
"$work/count" "$work/count.log" </dev/null >/dev/null 2>&1 &
pid=$!
sleep 1
echo "counter $pid is at: $(tail -n1 "$work/count.log")"
.venv/bin/engine dump -t "$pid" -D "$work/img"
{ wait "$pid"; } 2>/dev/null || true
echo "dumped to $work/img; process $pid is gone: $(kill -0 "$pid" 2>&1 || true)"
.venv/bin/engine restore -D "$work/img"
sleep 1
echo "restored $pid is at: $(tail -n1 "$work/count.log") ($(cat /proc/$pid/comm))"
kill "$pid"
