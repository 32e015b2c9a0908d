"""Differential privacy for device updates: clip, noise (local, distributed, discrete), account.

Modules: :mod:`.config` (the frozen :class:`~.config.PrivacyConfig`), :mod:`.rng` (the one
OS-seeded generator factory), :mod:`.clip`, :mod:`.noise` (float Gaussian noise and the
device-side ``privatize`` step), :mod:`.discrete` (distributed discrete Gaussian in the SecAgg
integer ring), :mod:`fedge.coordinator.rounds.accounting` (a thin wrapper over Google's ``dp-accounting``, on the coordinator side),
:mod:`.adaptive` (quantile-based adaptive clipping) and :mod:`.ledger` (the device's budget).
See ``docs/privacy.md`` for the guarantees, neighbouring relations and caveats.
"""
