#!/bin/sh
# One agent of the compose fleet: the trial profile pointed at the compose broker, an identity made
# here and enrolled in the coordinator's store (shared /fleet volume), local training data, then the
# daemon. The data is random (x in [0,1)^64, 10 labels): the fleet runs rounds, it learns nothing.
set -eu
id="${FEDGE_DEVICE_ID:-agent-$(hostname)}"
fleet="${FEDGE_FLEET_DIR:-/fleet}"
state="$HOME/state"
mkdir -p "$state"
profile="$state/agent.toml"
sed "s#mqtt://127.0.0.1:1883#${FEDGE_BROKER:-mqtt://mosquitto:1883}#" "${FEDGE_PROFILE:-/etc/fedge/trial.toml}" > "$profile"
db="$state/agent.db"
python -c "import numpy as np; r = np.random.default_rng(); np.savez('$state/data.npz', x=r.random((120, 64), dtype=np.float32), y=r.integers(0, 10, 120))"
fedge-agent data import "$state/data.npz" --model mlp --test-fraction 0.2 --profile "$profile" --db "$db"
identity=$(fedge-agent init --profile "$profile" --device-id "$id" --db "$db" | cut -d' ' -f2)
# serve makes the store; wait for it, then enroll (the coordinator picks devices up at the next check-in)
while [ ! -s "$fleet/coordinator.db" ]; do sleep 1; done
keys=$(fedge-coordinator devices enroll --db "$fleet/coordinator.db" --device-id "$id" --identity "$identity" \
       --class pi4 --tag compose)
authority=$(echo "$keys" | sed -n 's/.*authority \([0-9a-f]\{64\}\).*/\1/p' | head -n1)
release=$(echo "$keys" | sed -n 's/.*release key \([0-9a-f]\{64\}\).*/\1/p' | head -n1)
fedge-agent init --profile "$profile" --device-id "$id" --db "$db" ${authority:+--authority "$authority"} \
    ${release:+--release-key "$release"}
exec fedge-agent run --profile "$profile" --db "$db"
