#!/usr/bin/env bash
# make demo: start one manager in a temp dir, drive it with swarmctl, stop it.
# Usage: scripts/demo.sh <dir holding swarmd and swarmctl>
set -euo pipefail
bin=$(cd "${1:-target/debug}" && pwd)
work=$(mktemp -d /tmp/swarmd-demo.XXXXXX)
export SWARM_SOCKET="$work/swarmd.sock"
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -INT "$pid"; wait "$pid" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "\$ swarmd -d $work/state --listen-control-api $SWARM_SOCKET --listen-remote-api 127.0.0.1:0 &"
"$bin/swarmd" -d "$work/state" --listen-control-api "$SWARM_SOCKET" \
  --listen-remote-api 127.0.0.1:0 >"$work/swarmd.out" 2>"$work/swarmd.log" &
pid=$!

# Wait (bounded) until the control API answers.
for _ in $(seq 1 100); do
  if [ -S "$SWARM_SOCKET" ] && "$bin/swarmctl" cluster ls >/dev/null 2>&1; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "swarmd exited:"; cat "$work/swarmd.log"; exit 1; fi
  sleep 0.1
done

run() {
  echo
  echo "\$ swarmctl $*"
  "$bin/swarmctl" "$@"
}

run cluster ls
run node ls
run service create --name web --image nginx:1.25 --replicas 2 --env A=1 --ports http:80:8080
run service ls
run service inspect web
run service update web --replicas 3
run service ls
run service remove web
run service ls

echo
echo "\$ kill -INT $pid   # graceful stop"
kill -INT "$pid"
wait "$pid"
pid=
echo "swarmd exited with status 0; its log:"
cat "$work/swarmd.log"
