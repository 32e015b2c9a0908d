"""Hypothesis strategies for any registered wire message, derived from its type hints."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.agent.core import wire

_INT = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_DTYPES = list(wire.ARRAY_DTYPES.values())


def array_strategy() -> st.SearchStrategy[np.ndarray]:
    """Any wire dtype and shape, with flat float32/uint32/uint16 vectors (the common case) often."""
    anything = st.sampled_from(_DTYPES).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    )
    flat = st.sampled_from([np.dtype("<f4"), np.dtype("<u4"), np.dtype("<u2")]).flatmap(
        lambda dt: hnp.arrays(dt, st.integers(0, 16))
    )
    return st.one_of(anything, flat)


#: Strategies for types whose invariants random fields rarely satisfy. Add yours here.
OVERRIDES: dict[type, st.SearchStrategy[Any]] = {}


def _register_overrides() -> None:
    from fedge.agent.core.messages.rounds import WEIGHTINGS, QuantizationPlan, RoundPlan, TrainingPlan
    from fedge.agent.core.messages.transport import Chunk
    from fedge.agent.core.privacy.config import MODES, SAMPLINGS, AdaptiveClipping, PrivacyConfig
    from fedge.agent.core.secagg.params import SecAggParams

    OVERRIDES[SecAggParams] = _secagg_params()
    from fedge.agent.core.messages.fleet import ReleaseManifest

    OVERRIDES[ReleaseManifest] = _release_manifest()
    from fedge.agent.core.messages.fleet import RollbackCommand

    OVERRIDES[RollbackCommand] = st.builds(
        RollbackCommand,
        st.text(max_size=20),
        st.from_regex(r"\A[A-Za-z0-9_.:-]{1,32}\Z"),
        st.from_regex(r"\A[A-Za-z0-9_.:+-]{1,64}\Z"),
        st.from_regex(r"\A[0-9a-f]{16}\Z"),
        st.binary(min_size=64, max_size=64),
    )
    OVERRIDES[Chunk] = st.builds(
        lambda tid, count, data, extra, digest, pick: Chunk(tid, pick % count, count, len(data) + extra, digest, data),
        st.text(min_size=1, max_size=16),
        st.integers(1, 1000),
        st.binary(max_size=64),
        st.integers(0, 10**6),
        st.binary(min_size=32, max_size=32),
        st.integers(0, 10**6),
    )
    pos = st.floats(min_value=1e-6, max_value=1e6)

    def _plan(adaptive: tuple[float, float, float] | None, privacy: dict[str, Any], **kw: Any) -> RoundPlan:
        if privacy["mode"] != "off" and privacy["noise_multiplier"] == 0:
            privacy["noise_multiplier"] = 1.0
        clipping = None
        if adaptive is not None and privacy["mode"] != "off":
            q, eta, extra = adaptive
            clipping = AdaptiveClipping(q, eta, privacy["noise_multiplier"] / 2 + extra)
        return RoundPlan(
            **kw,
            privacy=PrivacyConfig(**privacy, adaptive=clipping),
            dp_denominator=0 if privacy["mode"] == "off" else 7,
        )

    OVERRIDES[RoundPlan] = st.builds(
        _plan,
        adaptive=st.none() | st.tuples(st.floats(0.01, 0.99), pos, pos),
        privacy=st.fixed_dictionaries(
            {
                "mode": st.sampled_from(MODES),
                "clip_norm": pos,
                "noise_multiplier": st.floats(0, 100),
                "min_clients": st.integers(1, 10**6),
                "delta": st.floats(min_value=1e-12, max_value=0.5),
                "sampling": st.sampled_from(SAMPLINGS),
            }
        ),
        model_name=st.text(max_size=8),
        model_version=st.text(max_size=8),
        training=st.builds(TrainingPlan, st.integers(1, 10), st.integers(1, 512), pos, st.floats(0, 10)),
        quantization=st.builds(QuantizationPlan, st.integers(16, 32), pos, pos),
        weighting=st.sampled_from(WEIGHTINGS),
        example_cap=st.integers(1, 10**6),
        secagg=st.just(True),
        sampling_rate=st.floats(min_value=1e-6, max_value=1.0),
        deadline_s=pos,
    )


def _secagg_params() -> st.SearchStrategy[Any]:
    """Valid SecAggParams: k even (or n - 1), k/2 < t <= k."""
    from fedge.agent.core.secagg.params import SecAggParams

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        n = draw(st.integers(2, 60))
        ks = [n - 1] + list(range(2, n - 1, 2))
        k = draw(st.sampled_from(ks))
        t = draw(st.integers(k // 2 + 1, k))
        return SecAggParams(n, k, t, draw(st.integers(1, 10**6)), draw(st.integers(16, 32)), draw(st.integers(1, n)))

    return build()


def _release_manifest() -> st.SearchStrategy[Any]:
    """Valid ReleaseManifests: safe versions, hex hash and key id, finite metrics."""
    from fedge.agent.core.messages.fleet import ReleaseManifest

    version = st.from_regex(r"\A[A-Za-z0-9_.:+-]{1,64}\Z")
    finite = st.floats(allow_nan=False, allow_infinity=False)
    return st.builds(
        ReleaseManifest,
        version,
        st.just("") | version,
        st.text(min_size=1, max_size=16),
        st.from_regex(r"\A[0-9a-f]{64}\Z"),
        st.integers(1, 2**31 - 1),
        st.dictionaries(st.text(max_size=8), finite, max_size=3),
        st.lists(st.integers(0, 10**6), max_size=4).map(tuple),
        st.text(max_size=32),
        st.from_regex(r"\A[0-9a-f]{16}\Z"),
        finite,
    )


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    if not OVERRIDES:
        _register_overrides()
    if tp in OVERRIDES:
        return OVERRIDES[tp]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.none() | strategy_for(args[0])
    if tp is int:
        return _INT
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is bool:
        return st.booleans()
    if tp is str:
        return st.text(max_size=20)
    if tp is bytes:
        return st.binary(max_size=64)
    if tp is np.ndarray:
        return array_strategy()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return dataclass_strategy(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
        return st.tuples(*(strategy_for(a) for a in args))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        return st.dictionaries(strategy_for(kt), strategy_for(vt), max_size=4)
    raise TypeError(f"no strategy for {tp!r}")


def dataclass_strategy(cls: type) -> st.SearchStrategy[Any]:
    """Instances of ``cls``; those its ``__post_init__`` rejects are filtered out."""
    if not OVERRIDES:
        _register_overrides()
    if cls in OVERRIDES:
        return OVERRIDES[cls]
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}

    def build(kwargs: dict[str, Any]) -> Any:
        try:
            return cls(**kwargs)
        except (ValueError, TypeError):
            return None

    return st.fixed_dictionaries(fields).map(build).filter(lambda m: m is not None)


def equal(a: Any, b: Any) -> bool:
    """Deep equality that compares arrays by dtype, shape and bytes."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype.str.lstrip("<>=|") == b.dtype.str.lstrip("<>=|")
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    return type(a) is type(b) and a == b
