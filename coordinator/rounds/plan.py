"""A campaign's training configuration, and the per-round plan the coordinator derives from it.

The plan fixes everything both sides must agree on: training hyper-parameters, the privacy
mode and its noise, and the fixed-point quantization (range and scale), chosen so that the sum
of every selected device's vector (plus distributed noise) cannot wrap in Z_2^bits.
"""

from __future__ import annotations

import dataclasses
import math

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.messages.rounds import WEIGHTINGS, QuantizationPlan, RoundPlan, TrainingPlan, Weighting
from fedge.agent.core.privacy.config import MODES, AdaptiveClipping, DpMode, PrivacyConfig
from fedge.agent.core.secagg.quantize import check_no_wrap, choose_scale, max_abs_int

#: Local-mode noise is clipped to this many standard deviations before quantization
#: (post-processing: it cannot weaken the guarantee).
LOCAL_NOISE_SIGMAS = 4.0
#: Distributed noise headroom in the integer ring, in central standard deviations.
RING_NOISE_SIGMAS = 8.0


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """One campaign's settings, resolved once from CLI flags or a file."""

    model_name: str = "mlp"
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 0.1
    dp_mode: DpMode = DpMode.OFF
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    delta: float = 1e-6
    secagg: bool = True
    quant_bits: int = 32
    weighting: Weighting = Weighting.EXAMPLES
    example_cap: int = 256
    goal: int = 10
    over_selection: float = 1.3
    #: the fewest clients a round may aggregate, and so the shares distributed noise is split over
    min_clients: int = 2
    train_deadline_s: float = 120.0
    stage_timeout_s: float = 30.0
    #: DP-FedAvg's fixed denominator: the number of reports a round expects (0: the goal)
    expected_reports: int = 0
    #: adaptive clipping (Andrew et al. 2021): the target quantile of the update norms that C
    #: follows (0: off, C fixed at ``clip_norm``, which is then only the first round's C)
    target_quantile: float = 0.0
    #: eta_C of the geometric update C <- C exp(-eta (b_bar - gamma))
    adaptive_learning_rate: float = 0.2
    #: sigma_b, the noise on the clip-bit sum (0: the paper's expected_clients / 20)
    clip_count_stddev: float = 0.0
    #: FedProx's proximal coefficient on the device (Li et al., MLSys 2020); 0 = plain local SGD
    prox_mu: float = 0.0

    @property
    def adaptive(self) -> AdaptiveClipping | None:
        """The adaptive-clipping settings, None when C is fixed."""
        if self.target_quantile == 0:
            return None
        sigma_b = self.clip_count_stddev or (self.expected_reports or self.goal) / 20
        return AdaptiveClipping(self.target_quantile, self.adaptive_learning_rate, sigma_b)

    def __post_init__(self) -> None:
        # the enums' values are what flags, files and stored plans spell; each is read once, here
        if self.dp_mode not in MODES:
            raise ConfigError(f"dp: expected one of {MODES}, got {self.dp_mode!r}")
        object.__setattr__(self, "dp_mode", DpMode(self.dp_mode))
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting: expected 'examples' or 'uniform', got {self.weighting!r}")
        object.__setattr__(self, "weighting", Weighting(self.weighting))
        if not (math.isfinite(self.prox_mu) and self.prox_mu >= 0):
            raise ConfigError(f"prox_mu: expected a finite number >= 0, got {self.prox_mu!r}")
        PrivacyConfig(
            mode=self.dp_mode,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier if self.dp_mode != "off" else 1.0,
            delta=self.delta,
            min_clients=self.min_clients,
        ).validate(secagg_enabled=self.secagg)
        if self.target_quantile != 0:
            if self.dp_mode == "off":
                raise ConfigError("target_quantile: adaptive clipping needs DP on (dp_mode local or distributed)")
            if self.clip_count_stddev < 0:
                raise ConfigError(f"clip_count_stddev: expected >= 0, got {self.clip_count_stddev}")
            PrivacyConfig(
                mode=self.dp_mode,
                clip_norm=self.clip_norm,
                noise_multiplier=self.noise_multiplier,
                delta=self.delta,
                min_clients=self.min_clients,
                adaptive=self.adaptive,
            ).validate(secagg_enabled=self.secagg)
        if not 1 <= self.min_clients <= self.goal:
            raise ConfigError(f"min_clients: expected 1 <= min_clients <= goal ({self.goal}), got {self.min_clients}")
        if not 16 <= self.quant_bits <= 32:
            raise ConfigError(f"quant_bits: expected 16..32, got {self.quant_bits}")
        if self.over_selection < 1:
            raise ConfigError(f"over_selection: expected >= 1, got {self.over_selection}")


def quant_range(cfg: TrainingConfig, clip_norm: float | None = None) -> float:
    """Box every coordinate is clipped to before quantization (covers the weight coordinate 1
    and the clip bit +-1/2). ``clip_norm``: the round's C when clipping is adaptive."""
    r = cfg.clip_norm if clip_norm is None else clip_norm
    if cfg.dp_mode == "local":
        r = r * (1 + LOCAL_NOISE_SIGMAS * cfg.noise_multiplier)
        if cfg.adaptive is not None:  # the locally noised clip bit, so its noise is not clipped away
            r = max(r, 0.5 + LOCAL_NOISE_SIGMAS * cfg.adaptive.clip_count_stddev)
    return max(1.0, r)


def make_plan(
    cfg: TrainingConfig,
    model_version: str,
    cohort_size: int,
    population: int,
    clip_norm: float | None = None,
    sampling_rate: float | None = None,
    min_clients: int | None = None,
    sampling: str = "poisson",
) -> RoundPlan:
    """The plan for a round with ``cohort_size`` selected devices out of ``population``.

    ``clip_norm`` is the round's current C under adaptive clipping (the previous round's
    ``RoundOutcome.next_clip_norm``); None means ``cfg.clip_norm``. ``sampling_rate`` is the
    Poisson rate the cohort was drawn with; None means a fixed-size draw, ``cohort_size / population``.
    ``sampling`` names how the cohort was drawn (``poisson`` or ``fixed``), which the accountant needs.
    ``min_clients``: the shares distributed noise is split over (None: the campaign's); fewer
    shares than the cohort means several noised sums add up (SecAgg+ groups), and the ring's
    headroom is sized for the summed noise.
    """
    if cohort_size < 1 or population < cohort_size:
        raise ConfigError(f"cohort of {cohort_size} out of a population of {population}")
    c = cfg.clip_norm if clip_norm is None else clip_norm
    if not (math.isfinite(c) and c > 0):
        raise ConfigError(f"clip_norm: expected a finite number > 0, got {c!r}")
    adaptive = cfg.adaptive
    r = quant_range(cfg, c)
    headroom = 1.0
    if cfg.dp_mode == "distributed":
        central = max(cfg.noise_multiplier * c, adaptive.clip_count_stddev if adaptive else 0.0)
        shares = min(cfg.min_clients, cohort_size) if min_clients is None else min_clients
        summed = central * math.sqrt(max(1.0, cohort_size / shares)) if min_clients is not None else central
        headroom += RING_NOISE_SIGMAS * summed / (cohort_size * r)
    scale = choose_scale(r, cfg.quant_bits, cohort_size, headroom)
    check_no_wrap(cohort_size, max_abs_int(r, scale), cfg.quant_bits)
    # Under DP every client weighs the same: a data-size weight would change the sensitivity.
    weighting = Weighting.UNIFORM if cfg.dp_mode is not DpMode.OFF else cfg.weighting
    return RoundPlan(
        model_name=cfg.model_name,
        model_version=model_version,
        training=TrainingPlan(cfg.epochs, cfg.batch_size, cfg.learning_rate, prox_mu=cfg.prox_mu),
        privacy=PrivacyConfig(
            mode=cfg.dp_mode,
            clip_norm=c,
            noise_multiplier=cfg.noise_multiplier,
            delta=cfg.delta,
            sampling=sampling,
            min_clients=min(cfg.min_clients, cohort_size) if min_clients is None else min_clients,
            adaptive=adaptive,
        ),
        quantization=QuantizationPlan(bits=cfg.quant_bits, scale=scale, range=r),
        weighting=weighting,
        example_cap=cfg.example_cap,
        secagg=cfg.secagg,
        sampling_rate=min(1.0, cohort_size / population) if sampling_rate is None else sampling_rate,
        deadline_s=cfg.train_deadline_s,
        dp_denominator=0 if cfg.dp_mode == "off" else min(cfg.expected_reports or cfg.goal, cohort_size),
    )
