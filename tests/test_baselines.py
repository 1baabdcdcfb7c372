import numpy as np
import pytest

from asyncjax import baselines


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _data(seed, batch=12, classes=7):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 500, size=classes)
    labels = rng.integers(0, classes, size=batch)
    return rng, counts, labels


@pytest.mark.parametrize("seed", range(3))
def test_ldam_margins_and_drw_weights(seed):
    _, counts, _ = _data(seed)
    margins = baselines.ldam_margins(counts, 0.5)
    expected = 1 / counts ** 0.25
    np.testing.assert_allclose(margins, expected * 0.5 / expected.max(), rtol=1e-6)
    assert margins[np.argmin(counts)] == pytest.approx(0.5)
    weights = baselines.drw_class_weights(counts, 0.9999)
    raw = (1 - 0.9999) / (1 - 0.9999 ** counts.astype(float))
    np.testing.assert_allclose(weights, raw / raw.sum() * len(counts), rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("weighted", [False, True])
def test_ldam_loss_matches_reference(seed, weighted):
    rng, counts, labels = _data(seed)
    cosine = rng.uniform(-1, 1, size=(len(labels), len(counts))).astype(np.float32)
    margins = baselines.ldam_margins(counts)
    weights = baselines.drw_class_weights(counts) if weighted else None
    adjusted = cosine.astype(np.float64).copy()
    adjusted[np.arange(len(labels)), labels] -= margins[labels]
    per = -_log_softmax(30.0 * adjusted)[np.arange(len(labels)), labels]
    w = weights[labels] if weighted else np.ones(len(labels))
    want = (w * per).sum() / w.sum()
    got = baselines.ldam_loss(cosine, labels, margins, scale=30.0, class_weights=weights)
    np.testing.assert_allclose(float(got), want, rtol=1e-4)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("gamma", [1.0, 2.0, 0.0])
def test_focal_loss_matches_reference(seed, gamma):
    """LDAM-DRW's focal_loss: p = exp(-CE), mean((1 - p)^gamma * CE); gamma 0 is cross-entropy."""
    rng, counts, labels = _data(seed)
    logits = (3 * rng.normal(size=(len(labels), len(counts)))).astype(np.float32)
    ce = -_log_softmax(logits.astype(np.float64))[np.arange(len(labels)), labels]
    want = np.mean((1 - np.exp(-ce)) ** gamma * ce)
    np.testing.assert_allclose(float(baselines.focal_loss(logits, labels, gamma=gamma)), want, rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_logit_adjusted_loss_and_posthoc(seed, tau):
    rng, counts, labels = _data(seed)
    logits = rng.normal(size=(len(labels), len(counts))).astype(np.float32)
    prior = counts / counts.sum()
    want = -_log_softmax(logits + tau * np.log(prior))[np.arange(len(labels)), labels].mean()
    np.testing.assert_allclose(float(baselines.logit_adjusted_loss(logits, labels, counts, tau=tau)), want,
                               rtol=1e-5)
    np.testing.assert_array_equal(baselines.posthoc_logit_adjustment(logits, counts, tau=tau),
                                  np.argmax(logits - tau * np.log(prior), axis=1))


@pytest.mark.parametrize("seed", range(3))
def test_tau_normalize_and_ncm(seed):
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(5, 4)).astype(np.float32)
    for tau in (0.0, 0.5, 1.0):
        want = kernel / np.linalg.norm(kernel, axis=0) ** tau
        np.testing.assert_allclose(baselines.tau_normalize(kernel, tau), want, rtol=1e-5)
    features = rng.normal(size=(30, 5)).astype(np.float32)
    labels = np.concatenate([np.arange(4), rng.integers(0, 4, size=26)])
    means = np.stack([features[labels == c].mean(axis=0) for c in range(4)])
    np.testing.assert_allclose(baselines.class_means(features, labels, 4), means, rtol=1e-5, atol=1e-6)
    queries = rng.normal(size=(10, 5)).astype(np.float32)
    cos = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        means / np.linalg.norm(means, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(baselines.ncm_predict(queries, means), cos.argmax(axis=1))
    dist = ((queries[:, None] - means[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(baselines.ncm_predict(queries, means, metric="euclidean"), dist.argmin(axis=1))


def test_each_method_gets_its_own_papers_head_unless_overridden():
    from asyncjax import config_utils
    from tests import helpers
    expected = {"async": "cosine", "plain": "cosine", "ldam_drw": "cosine", "crt": "linear", "ncm": "linear",
                "balanced_softmax": "linear", "logit_adjustment": "linear", "focal": "linear", "tau_norm": "linear", "lws": "linear"}
    for method, head in expected.items():
        config = config_utils.load_config_file(str(helpers.REPO / "configs/cifar100_lt.py"))
        assert config.model.head == "auto"
        config.method = method
        config_utils.resolve_head(config)
        assert config.model.head == head, method
    config.method, config.model.head = "crt", "cosine"   # An explicit choice is kept.
    config_utils.resolve_head(config)
    assert config.model.head == "cosine"


def test_ldam_drw_preset_runs_its_authors_recipe():
    from asyncjax import config_utils, experiments
    from tests import helpers
    preset = config_utils.load_config_file(str(helpers.REPO / "configs/cifar100_lt.py") + ":method=ldam_drw")
    assert preset.method == "ldam_drw"
    assert (preset.phase1.batch_size, preset.phase1.weight_decay, preset.phase1.base_lr) == (128, 2e-4, 0.1)
    assert preset.phase1.decay_factor == 0.01 and preset.phase1.warmup_epochs == 5
    row = experiments.row_config("ldam_drw", 100, 0, "full", [])
    assert (row.phase1.batch_size, row.phase1.weight_decay) == (128, 2e-4) and row.phase1.epochs == 200
    assert experiments.row_config("async", 100, 0, "full", []).phase1.weight_decay == 5e-4
    focal = experiments.row_config("focal", 100, 0, "full", [])  # Table 3's focal row: the same code's recipe.
    assert (focal.method, focal.phase1.batch_size, focal.phase1.weight_decay, focal.loss.focal_gamma) == (
        "focal", 128, 2e-4, 1.0)
