"""Test-only: a hostile device. Put this folder on a ``fedge-agent run`` process's PYTHONPATH with
``FEDGE_TEST_FORGE_SHARES=1`` and that process forges its first self-mask share at unmask (a field
element shifted, every limb in range: Shamir is linear, only the commitment or a cross-check can
tell). Never imported by fedge; nothing outside tests/ names this folder."""

import os

if os.environ.get("FEDGE_TEST_FORGE_SHARES") == "1":
    import dataclasses

    import numpy as np

    from fedge.agent.core.crypto import shamir
    from fedge.agent.core.secagg import client as _client

    _honest = _client.SecAggClient._on_unmask

    def _forging(self, msg):  # type: ignore[no-untyped-def]
        reply = _honest(self, msg)
        if len(reply.self_mask_shares):
            rows = np.array(reply.self_mask_shares, copy=True)
            rows[0, 0] = (int(rows[0, 0]) + 12345) % shamir.PRIME
            reply = dataclasses.replace(reply, self_mask_shares=rows)
        return reply

    _client.SecAggClient._on_unmask = _forging  # type: ignore[method-assign]
