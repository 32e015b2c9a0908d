#!/bin/sh
# The compose fleet's coordinator: rounds over the compose broker, its store on the shared /fleet
# volume, Prometheus metrics on :9464. Arguments go to serve.
# A round selects among the devices enrolled when it is announced, so the store is made first and
# serve waits (at most FEDGE_ENROLL_WAIT_S) until FEDGE_AGENTS agents have enrolled themselves in it.
set -eu
db="${FEDGE_FLEET_DIR:-/fleet}/coordinator.db"
python -c "import sys; from fedge.coordinator.store import Store; Store(sys.argv[1]).close()" "$db"
waited=0
while [ "$(fedge-coordinator devices list --db "$db" --json | python -c 'import json, sys; print(len(json.load(sys.stdin)))')" \
        -lt "${FEDGE_AGENTS:-1}" ] && [ "$waited" -lt "${FEDGE_ENROLL_WAIT_S:-120}" ]; do
    sleep 1
    waited=$((waited + 1))
done
exec fedge-coordinator serve --db "$db" --broker "${FEDGE_BROKER:-mqtt://mosquitto:1883}" \
    --metrics-port 9464 --metrics-host 0.0.0.0 "$@"
