from unittest import mock

import jax
import numpy as np
import pytest

from asyncjax import sharding
from asyncjax.data import longtail
from asyncjax.data.sampling import STRATEGIES, EpochSampler, class_probabilities


@pytest.mark.parametrize("seed", range(3))
def test_class_probabilities_match_formulas(seed):
    counts = np.random.default_rng(seed).integers(1, 500, size=12).astype(float)
    np.testing.assert_allclose(class_probabilities(counts, "instance"), counts / counts.sum())
    np.testing.assert_allclose(class_probabilities(counts, "class_balanced"), np.full(12, 1 / 12))
    np.testing.assert_allclose(class_probabilities(counts, "sqrt"), np.sqrt(counts) / np.sqrt(counts).sum())
    for t, total in ((0, 10), (3, 10), (10, 10)):
        want = (1 - t / total) * counts / counts.sum() + (t / total) / 12
        np.testing.assert_allclose(class_probabilities(counts, "progressive", t, total), want)
    for strategy in STRATEGIES:
        assert class_probabilities(counts, strategy, 4, 10).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown sampler"):
        class_probabilities(counts, "uniform")


def _total_variation(labels, counts, strategy, epoch, total_epochs):
    freq = np.bincount(labels, minlength=len(counts)) / len(labels)
    return 0.5 * np.abs(freq - class_probabilities(counts, strategy, epoch, total_epochs)).sum()


class _FakeDevice:
    def __init__(self, process_index):
        self.process_index = process_index


class _FakeMesh:
    """A (data, model) mesh of `processes` hosts with the devices laid out host after host."""

    def __init__(self, processes, devices_per_process, model=1):
        count = processes * devices_per_process
        self.shape = {"data": count // model, "model": model}
        self.devices = np.array([_FakeDevice(i // devices_per_process) for i in range(count)],
                                dtype=object).reshape(count // model, model)


def _process_slice_as(positions, index, count, devices_per_process=2, model=1):
    """sharding.process_slice as process `index` of `count` would compute it."""
    with mock.patch.object(jax, "process_index", return_value=index):
        return sharding.process_slice(positions, _FakeMesh(count, devices_per_process, model))


def test_process_slices_are_disjoint_contiguous_and_cover_the_global_batch():
    positions = np.random.default_rng(0).permutation(1000)[:48]
    for count in (1, 2, 4, 8):
        shares = [_process_slice_as(positions, i, count, devices_per_process=48 // count // 3) for i in range(count)]
        assert all(len(s) == 48 // count for s in shares)
        # In process order they are the global batch again: disjoint, each row once, in place.
        np.testing.assert_array_equal(np.concatenate(shares), positions)
        # Process i holds rows i * per ... (i + 1) * per: the rows its devices own under the data axis.
        np.testing.assert_array_equal(shares[count - 1], positions[-(48 // count):])
    with pytest.raises(ValueError, match="not divisible by the 10 data-parallel devices"):
        _process_slice_as(positions, 0, 5)


def test_hosts_that_share_data_positions_over_a_model_axis_load_the_same_rows():
    """v5e:8x8 with mesh.model=8: 16 hosts of 4 chips, 8 data positions, each held by 2 hosts."""
    positions = np.arange(512) * 3
    shares = [_process_slice_as(positions, i, 16, devices_per_process=4, model=8) for i in range(16)]
    assert all(len(s) == 64 for s in shares)
    for data_index in range(8):  # Hosts 2i and 2i+1 hold data position i: rows 64 i .. 64 (i + 1).
        np.testing.assert_array_equal(shares[2 * data_index], positions[64 * data_index:64 * (data_index + 1)])
        np.testing.assert_array_equal(shares[2 * data_index + 1], shares[2 * data_index])


@pytest.mark.parametrize("strategy", ["class_balanced", "sqrt", "progressive", "instance"])
@pytest.mark.parametrize("hosts", [1, 4])
def test_global_sample_follows_target_probabilities(strategy, hosts):
    counts = longtail.lt_counts(20, 400, 50)
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(20), counts))
    batch, epoch, total = 64, 3, 10
    sampler = EpochSampler(labels, batch, seed=1, phase=1, strategy=strategy, total_epochs=total)
    drawn = []
    for step in range(sampler.steps_per_epoch):
        positions = sampler.batch(epoch, step)
        # Each of `hosts` processes keeps its share of the same global batch (sharding.process_slice).
        shares = [_process_slice_as(positions, index, hosts, devices_per_process=16 // hosts)
                  for index in range(hosts)]
        assert sum(len(s) for s in shares) == batch
        drawn.extend(labels[np.concatenate(shares)])
    drawn = np.asarray(drawn)
    # n ~ 2,600 draws over 20 classes: sampling noise in total variation is about 0.03.
    assert _total_variation(drawn, counts, strategy, epoch, total) < 0.06
    if strategy == "instance":  # An instance-balanced epoch is a permutation: each row once at most.
        rows = np.concatenate([sampler.batch(epoch, s) for s in range(sampler.steps_per_epoch)])
        assert len(np.unique(rows)) == len(rows)


def test_batches_are_a_pure_function_of_seed_phase_epoch_step():
    labels = np.repeat(np.arange(5), [50, 30, 20, 10, 5])
    make = lambda **kw: EpochSampler(labels, 8, **{"seed": 0, "phase": 1, "strategy": "class_balanced", **kw})
    a, b = make(), make()
    np.testing.assert_array_equal(a.batch(2, 3), b.batch(2, 3))
    b.batch(5, 0)  # Visiting another epoch first changes nothing.
    np.testing.assert_array_equal(a.batch(2, 3), b.batch(2, 3))
    assert not np.array_equal(a.batch(2, 3), make(seed=1).batch(2, 3))
    assert not np.array_equal(a.batch(2, 3), make(phase=2).batch(2, 3))
    assert not np.array_equal(a.batch(2, 3), a.batch(3, 3))
    assert a.steps_per_epoch == len(labels) // 8
    assert make(max_steps_per_epoch=4).steps_per_epoch == 4
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochSampler(labels[:5], 8, seed=0, phase=1)
