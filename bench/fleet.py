"""Rollout controller costs at fleet scale, as ratios to listing the enrolled devices in the same run.

For N enrolled devices (default 2,000) and a mlp release (~17k params): the first tick of a
staged rollout (10% phase: signs nothing, builds N/10 install commands), a steady tick while
the phase waits for reports, recording one install report, and a tick with a completed cohort
rollout (the late-enrollee scan). Baseline: ``list_devices`` over the same store.

Run: ``.venv/bin/python bench/fleet.py [N]``; the last line is JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedge.agent.core.crypto import IdentityKey  # noqa: E402
from fedge.agent.core.messages.fleet import InstallReport, InstallResult  # noqa: E402
from fedge.agent.training.models import load_spec  # noqa: E402
from fedge.agent.training.trainer import Trainer  # noqa: E402
from fedge.coordinator.fleet.controller import FleetController, create_rollout  # noqa: E402
from fedge.coordinator.fleet.releases import create_release  # noqa: E402
from fedge.coordinator.fleet.rollouts import Spec, Target  # noqa: E402
from fedge.coordinator.service.enrollment import list_devices  # noqa: E402
from fedge.coordinator.store import Store  # noqa: E402


def best_of(f, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "c.db"))
        public = IdentityKey.generate().public_bytes()
        store.db["devices"].insert_all(
            (
                {
                    "device_id": f"dev-{i:05d}",
                    "identity_public": public,
                    "device_class": "pi4",
                    "tags": '["lab"]',
                    "enrolled_at": 0.0,
                    "revoked": 0,
                }
                for i in range(n)
            ),
            batch_size=1000,
        )
        store.put_model("mlp-1", Trainer(load_spec("mlp")).initial_weights(), architecture="mlp")
        create_release(store, "mlp-1")
        now = [1000.0]
        ctl = FleetController(store, clock=lambda: now[0])
        base = best_of(lambda: list_devices(store))

        create_rollout(
            store, Spec("staged", "mlp-1", Target(device_class="pi4"), phases=(0.1, 1.0)), clock=lambda: now[0]
        )
        t = time.perf_counter()
        sent = ctl.tick()
        first = time.perf_counter() - t
        steady = best_of(ctl.tick)
        dev = sent[0].device_id
        report = InstallReport(dev, "staged", "mlp-1", InstallResult.INSTALLED, "mlp-1", 0.9, 0.8, 20, "")
        handle = best_of(lambda: ctl.handle(dev, report), 5)
        for o in sent:  # finish the rollout: every device reports
            ctl.handle(
                o.device_id,
                InstallReport(o.device_id, "staged", "mlp-1", InstallResult.INSTALLED, "mlp-1", None, None, 0, ""),
            )
        rest = ctl.tick()
        for o in rest:
            ctl.handle(
                o.device_id,
                InstallReport(o.device_id, "staged", "mlp-1", InstallResult.INSTALLED, "mlp-1", None, None, 0, ""),
            )
        ctl.tick()
        completed = best_of(ctl.tick)
        store.close()
    out = {
        "devices": n,
        "install_commands_first_tick": len(sent),
        "list_devices_s": round(base, 5),
        "first_tick_ratio": round(first / base, 1),
        "steady_tick_ratio": round(steady / base, 1),
        "handle_report_ratio": round(handle / base, 3),
        "completed_tick_ratio": round(completed / base, 1),
        "first_tick_s": round(first, 4),
        "steady_tick_s": round(steady, 4),
        "completed_tick_s": round(completed, 4),
    }
    print(
        f"{n} devices: list_devices {base * 1e3:.1f} ms; first tick ({len(sent)} installs) {out['first_tick_ratio']}x, "
        f"steady tick {out['steady_tick_ratio']}x, one report {out['handle_report_ratio']}x, "
        f"tick after completion {out['completed_tick_ratio']}x"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
