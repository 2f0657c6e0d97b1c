#!/usr/bin/env bash
# make demo: SwarmKit's README walkthrough on one manager and two workers on loopback, each
# swarmctl command printed with its output. Tasks run in Docker (a locally built image: there is
# no registry) when an engine answers, and as plain processes otherwise.
# Usage: scripts/demo.sh <dir holding swarmd and swarmctl>
set -euo pipefail
bin=$(cd "${1:-target/debug}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/swarmd-demo.XXXXXX)
export SWARM_SOCKET="$work/node-1/swarm.sock"
pids=()
cleanup() {
  # A graceful stop: each node's agent shuts its tasks down (containers stopped and removed).
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

if docker info >/dev/null 2>&1 && bash "$here/test-image.sh" >/dev/null; then
  executor=docker
  image=swarmkit-test/busybox:latest
  docker tag "$image" swarmkit-test/busybox:v2
  docker tag "$image" swarmkit-test/busybox:v3
  image2=swarmkit-test/busybox:v2
  image3=swarmkit-test/busybox:v3
else
  executor=process
  image=busybox:1
  image2=busybox:2
  image3=busybox:3
fi
echo "# executor: $executor"

wait_for() { # wait_for <what> <command...>: up to 30 s
  local what=$1
  shift
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "demo: timed out waiting for $what" >&2
  for f in "$work"/*.log; do echo "== $f"; tail -20 "$f"; done >&2
  exit 1
}

start_node() { # start_node <name> <args...>
  local name=$1
  shift
  echo "\$ swarmd -d $work/$name --hostname $name --executor $executor $* &"
  "$bin/swarmd" -d "$work/$name" --hostname "$name" --executor "$executor" "$@" \
    >/dev/null 2>"$work/$name.log" &
  pids+=($!)
}

start_node node-1 --listen-control-api "$SWARM_SOCKET" --listen-remote-api 127.0.0.1:0
wait_for "the manager" "$bin/swarmctl" cluster ls
addr=$(grep -o 'Listening for connections.*addr=127.0.0.1:[0-9]*' "$work/node-1.log" | grep -o '127.0.0.1:[0-9]*' | head -1)

run() {
  echo
  echo "\$ swarmctl $*"
  "$bin/swarmctl" "$@"
}

run cluster inspect default
token=$("$bin/swarmctl" cluster inspect default | awk '/Worker:/ {print $2}')
echo
for n in node-2 node-3; do
  start_node "$n" --join-addr "$addr" --join-token "$token" \
    --listen-control-api "$work/$n/swarm.sock"
done
ready() { [ "$("$bin/swarmctl" node ls | grep -c ' READY ')" = 3 ]; }
wait_for "three READY nodes" ready

run node ls
cmd=(--command /bin/sh --args "-c,trap 'exit 0' TERM; sleep 3600 & wait")
run service create --name redis --image "$image" "${cmd[@]}"
running() { [ "$("$bin/swarmctl" service ls | awk '$2 == "redis" {print $4}')" = "$1/$1" ]; }
wait_for "1/1 running" running 1
run service ls
run service inspect redis
run service update redis --replicas 6
wait_for "6/6 running" running 6
run service inspect redis
run task ls
run service update redis --image "$image2"
updated() { "$bin/swarmctl" service inspect redis | grep -q 'State *: COMPLETED'; }
wait_for "the update" updated
run service inspect redis
run service update redis --image "$image3" --update-parallelism 2 --update-delay 1s
sleep 1
run service inspect redis
wait_for "the update with parallelism 2" updated
run service inspect redis
run node drain node-1
off_node_1() { # six tasks RUNNING, none on node-1
  [ "$("$bin/swarmctl" task ls | awk '$3 == "RUNNING" && $4 == "RUNNING" && $NF != "node-1"' | wc -l)" = 6 ]
}
wait_for "tasks off node-1" off_node_1
run node ls
run service inspect redis
run task ls
run service rm redis

echo
echo "\$ kill -INT ${pids[*]}   # graceful stop of every node"
