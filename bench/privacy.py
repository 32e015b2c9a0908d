"""Privacy costs as ratios measured in the same run (the machine is shared and noisy).

1. Device step for a 100k-parameter update: clip + local Gaussian noise, and the distributed
   discrete-Gaussian share, each against drawing 100k normals with the same generator.
2. Epsilon for 1,000 identical rounds: PLD against RDP, and an incremental accountant asked
   after every one of 200 heterogeneous rounds against one batch computation.

Run: ``.venv/bin/python bench/privacy.py``; the last line is JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedge.agent.core.privacy.config import PrivacyConfig  # noqa: E402
from fedge.agent.core.privacy.discrete import DiscreteNoisePlan, add_noise_share  # noqa: E402
from fedge.agent.core.privacy.noise import privatize  # noqa: E402
from fedge.coordinator.rounds.accounting import PrivacyAccountant, RoundEvent, epsilon, epsilon_of_events  # noqa: E402

D = 100_000


def best_of(f, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    update = rng.normal(size=D).astype(np.float32)
    cfg = PrivacyConfig(mode="local", clip_norm=1.0, noise_multiplier=1.0)
    plan = DiscreteNoisePlan(clip_norm=1.0, central_stddev=1.0, scale=2.0**14, bits=32, min_clients=100, dimension=D)
    q = np.zeros(D, dtype=np.uint32)
    base = best_of(lambda: rng.normal(size=D))
    local = best_of(lambda: privatize(update, cfg, rng))
    ddg = best_of(lambda: add_noise_share(q, plan, rng))

    rdp_t = best_of(lambda: epsilon(1.0, 0.01, 1000, 1e-6), 3)
    pld_t = best_of(lambda: epsilon(1.0, 0.01, 1000, 1e-6, accountant="pld"), 3)

    events = [RoundEvent(1.0 + 0.01 * (i % 5), 0.01) for i in range(200)]
    t = time.perf_counter()
    acc = PrivacyAccountant("rdp")
    for e in events:
        acc.record(e)
        acc.epsilon(1e-6)
    incremental = time.perf_counter() - t
    batch = best_of(lambda: epsilon_of_events(events, 1e-6), 3)

    out = {
        "normal_100k_s": round(base, 5),
        "local_privatize_over_normal": round(local / base, 2),
        "ddg_share_over_normal": round(ddg / base, 2),
        "eps_1000_rounds_rdp_s": round(rdp_t, 4),
        "pld_over_rdp": round(pld_t / rdp_t, 2),
        "incremental_200_rounds_over_one_batch": round(incremental / batch, 2),
        "eps_rdp_vs_pld": [
            round(epsilon(1.0, 0.01, 1000, 1e-6), 4),
            round(epsilon(1.0, 0.01, 1000, 1e-6, accountant="pld"), 4),
        ],
    }
    for k, v in out.items():
        print(f"{k}: {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
