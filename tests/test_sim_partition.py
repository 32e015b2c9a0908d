"""Partitions: skew where asked, disjoint where possible, reproducible, cheap for 100,000 clients."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError
from fedge.simulations.datasets import digits, synthetic
from fedge.simulations.federation import federate
from fedge.simulations.partition import (
    DrawPartition,
    PartitionSpec,
    SplitPartition,
    make_partition,
    parse_partition_spec,
    split_natural,
)

LABELS = digits(np.random.default_rng(0)).y_train  # 1,438 real labels, 10 classes


def _label_shares(labels: np.ndarray, part, clients: range) -> np.ndarray:
    rows = []
    for k in clients:
        counts = np.bincount(labels[part.indices(k)], minlength=10)
        rows.append(counts / max(1, counts.sum()))
    return np.array(rows)


def _tv_to_global(labels: np.ndarray, shares: np.ndarray) -> np.ndarray:
    prior = np.bincount(labels, minlength=10) / len(labels)
    return 0.5 * np.abs(shares - prior).sum(axis=1)


def _assert_disjoint(part: SplitPartition, n: int) -> None:
    every = np.concatenate([part.indices(k) for k in range(part.num_clients)])
    assert len(np.unique(every)) == len(every), "a sample belongs to two clients"
    assert every.min() >= 0 and every.max() < n


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.1", "dirichlet:100", "quantity:1.5"])
def test_split_partitions_are_disjoint_and_reproducible(spec: str) -> None:
    s = parse_partition_spec(spec)
    a = make_partition(s, LABELS, 40, np.random.default_rng(5))
    b = make_partition(s, LABELS, 40, np.random.default_rng(5))
    assert isinstance(a, SplitPartition)
    _assert_disjoint(a, len(LABELS))
    for k in (0, 17, 39):
        np.testing.assert_array_equal(a.indices(k), b.indices(k))
    assert sum(len(a.indices(k)) for k in range(40)) == len(LABELS)  # every sample is owned


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_near_iid() -> None:
    n_clients = 10  # ~144 samples each
    skewed = make_partition(PartitionSpec("dirichlet", 0.05), LABELS, n_clients, np.random.default_rng(1))
    near_iid = make_partition(PartitionSpec("dirichlet", 1000.0), LABELS, n_clients, np.random.default_rng(1))
    s_small = _label_shares(LABELS, skewed, range(n_clients))
    s_large = _label_shares(LABELS, near_iid, range(n_clients))
    # α = 0.05: a client's most common label holds over half its data, on average.
    assert s_small.max(axis=1).mean() > 0.5
    assert _tv_to_global(LABELS, s_small).mean() > 0.5
    # α = 1000: within sampling noise of the global label mix (TV ~0.1 expected at 144 samples).
    assert _tv_to_global(LABELS, s_large).max() < 0.2


def test_quantity_skew_follows_a_power_law_with_a_floor() -> None:
    part = make_partition(PartitionSpec("quantity", 1.5), LABELS, 100, np.random.default_rng(3), min_size=5)
    sizes = part.sizes(np.arange(100))
    assert sizes.sum() == len(LABELS) and sizes.min() >= 5
    assert sizes.max() > 4 * np.median(sizes)
    iid = make_partition(PartitionSpec("iid"), LABELS, 100, np.random.default_rng(3), min_size=5)
    iid_sizes = iid.sizes(np.arange(100))
    assert iid_sizes.max() - iid_sizes.min() <= 1


def test_population_beyond_the_pool_draws_per_client_lazily() -> None:
    n_clients = 100_000
    for spec in ("iid", "dirichlet:0.1", "dirichlet:1000", "quantity:1.5"):
        part = make_partition(parse_partition_spec(spec), LABELS, n_clients, np.random.default_rng(2))
        assert isinstance(part, DrawPartition)
        # State is a few arrays over the pool, not one object per client.
        assert part.by_class.nbytes + part.class_offsets.nbytes < 64 * len(LABELS)
        for k in (0, 1, 99_999):
            idx = part.indices(k)
            assert len(np.unique(idx)) == len(idx) >= 1  # no duplicate within a client
            np.testing.assert_array_equal(idx, part.indices(k))  # a pure function of (seed, k)
    skewed = make_partition(PartitionSpec("dirichlet", 0.05), LABELS, n_clients, np.random.default_rng(2))
    flat = make_partition(PartitionSpec("dirichlet", 1000.0), LABELS, n_clients, np.random.default_rng(2))
    ids = range(0, n_clients, 1000)
    assert _label_shares(LABELS, skewed, ids).max(axis=1).mean() > 0.6
    assert _label_shares(LABELS, flat, ids).max(axis=1).mean() < 0.45  # 10 samples, ~10 classes
    with pytest.raises(IndexError):
        skewed.indices(n_clients)


def test_natural_partition_by_writer_and_errors() -> None:
    writers = np.repeat(np.arange(30), 7)
    part = split_natural(writers, 20, np.random.default_rng(0))
    _assert_disjoint(part, len(writers))
    for k in range(20):
        assert len(set(writers[part.indices(k)].tolist())) == 1 and len(part.indices(k)) == 7
    with pytest.raises(ConfigError, match="30 writers"):
        split_natural(writers, 31, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="no natural split"):
        make_partition(PartitionSpec("natural"), LABELS, 10, np.random.default_rng(0))


def test_federation_of_synthetic_natural_is_per_device_and_pooled_otherwise() -> None:
    data = synthetic(1.0, 1.0, 100_000, np.random.default_rng(0), test_devices=10)
    nat = federate(data, PartitionSpec("natural"), 100_000, np.random.default_rng(0))
    x, y = nat.client(12_345)
    np.testing.assert_array_equal(x, data.device(12_345)[0])
    pooled = federate(data, PartitionSpec("dirichlet", 0.5), 100_000, np.random.default_rng(0))
    assert "draws" in pooled.description
    x2, y2 = pooled.client(99_999)
    assert x2.shape[1] == 60 and len(y2) >= 1


def test_parse_partition_spec() -> None:
    assert parse_partition_spec("iid") == PartitionSpec("iid")
    assert parse_partition_spec("natural") == PartitionSpec("natural")
    assert parse_partition_spec("dirichlet:0.5") == PartitionSpec("dirichlet", 0.5)
    assert parse_partition_spec("quantity:1.5") == PartitionSpec("quantity", 1.5)
    assert str(PartitionSpec("dirichlet", 0.5)) == "dirichlet:0.5"
    for bad in ("dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:x", "quantity:inf", "iid:3", "shards:2"):
        with pytest.raises(ConfigError, match="--partition"):
            parse_partition_spec(bad)
