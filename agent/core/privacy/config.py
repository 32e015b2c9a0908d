"""The privacy configuration of one process: mode, clip, noise, delta, accountant, sampling.

Resolved once (from a profile, a round plan or CLI flags) and validated with
:meth:`PrivacyConfig.validate`, which is where distributed DP without secure aggregation is
refused.
"""

from __future__ import annotations

import dataclasses
import math

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.names import ValueEnum


class DpMode(ValueEnum):
    """Where the DP noise comes from: none, each report (local), or shares of the sum (distributed)."""

    OFF = "off"
    LOCAL = "local"
    DISTRIBUTED = "distributed"


MODES = tuple(m.value for m in DpMode)
ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("poisson", "fixed")


def default_delta(population: int) -> float:
    """``1 / N**1.1``: strictly below ``1/N`` for any population of two or more devices."""
    if population < 2:
        raise ConfigError(f"population: expected >= 2 devices to choose a default delta, got {population}")
    return 1.0 / population**1.1


@dataclasses.dataclass(frozen=True)
class AdaptiveClipping:
    """Quantile-based adaptive clipping (Andrew et al., NeurIPS 2021).

    ``clip_count_stddev`` is sigma_b, the noise on the sum of clip bits; the paper suggests
    about ``expected_clients / 20``. ``learning_rate`` is eta_C of the geometric update.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    clip_count_stddev: float = 1.0


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
    """How updates are clipped and noised, and how epsilon is accounted.

    ``noise_multiplier`` is the total z that is accounted. With adaptive clipping part of it
    pays for the clip-bit query and the update itself gets :attr:`update_noise_multiplier`.
    ``delta`` of ``None`` means :func:`default_delta` of the population.
    """

    mode: DpMode = DpMode.OFF
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float | None = None
    accountant: str = "rdp"
    sampling: str = "poisson"
    #: distributed mode: the planned minimum number of clients whose noise shares add up
    min_clients: int = 1
    adaptive: AdaptiveClipping | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"privacy.mode: expected one of {MODES}, got {self.mode!r}")
        object.__setattr__(self, "mode", DpMode(self.mode))

    def validate(self, secagg_enabled: bool) -> PrivacyConfig:
        """Raise :class:`ConfigError` for an invalid or unsafe combination; return self."""
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"privacy.accountant: expected one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"privacy.sampling: expected one of {SAMPLINGS}, got {self.sampling!r}")
        if self.mode == "off":
            return self
        if self.mode == "distributed" and not secagg_enabled:
            raise ConfigError(
                "privacy.mode: 'distributed' needs secure aggregation (each client adds only a share "
                "of the noise, so an unmasked update is barely noised); enable secagg or use 'local'"
            )
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"privacy.clip_norm: expected a finite number > 0, got {self.clip_norm!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ConfigError(
                f"privacy.noise_multiplier: expected a finite number > 0 when mode is {self.mode!r}, "
                f"got {self.noise_multiplier!r}"
            )
        if self.delta is not None and not (0 < self.delta < 1):
            raise ConfigError(f"privacy.delta: expected a number in (0, 1), got {self.delta!r}")
        if self.accountant == "pld" and self.sampling == "fixed":
            raise ConfigError(
                "privacy.accountant: dp-accounting's PLD accountant has no sampling-without-replacement "
                "event; use accountant 'rdp' with fixed-size sampling"
            )
        if self.min_clients < 1:
            raise ConfigError(f"privacy.min_clients: expected >= 1, got {self.min_clients}")
        if self.adaptive is not None:
            a = self.adaptive
            if not 0 < a.target_quantile < 1:
                raise ConfigError(f"privacy.adaptive.target_quantile: expected (0, 1), got {a.target_quantile}")
            if not (math.isfinite(a.learning_rate) and a.learning_rate > 0):
                raise ConfigError(f"privacy.adaptive.learning_rate: expected > 0, got {a.learning_rate}")
            if not 2 * a.clip_count_stddev > self.noise_multiplier:
                raise ConfigError(
                    "privacy.adaptive.clip_count_stddev: the clip-bit query needs 2*sigma_b > noise_multiplier "
                    f"(got sigma_b={a.clip_count_stddev}, z={self.noise_multiplier}); raise sigma_b"
                )
        return self

    def resolved_delta(self, population: int | None) -> float:
        """The configured delta, else :func:`default_delta` of ``population``."""
        if self.delta is not None:
            return self.delta
        if population is None:
            raise ConfigError("privacy.delta: not set and no population size to derive 1/N**1.1 from")
        return default_delta(population)

    @property
    def update_noise_multiplier(self) -> float:
        """The z applied to the update itself: all of z, or z_Delta when clipping is adaptive."""
        if self.adaptive is None:
            return self.noise_multiplier
        from fedge.agent.core.privacy.adaptive import update_noise_multiplier

        return update_noise_multiplier(self.noise_multiplier, self.adaptive.clip_count_stddev)
