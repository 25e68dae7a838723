"""FAMO, STCH and IMTL-L against TorchJD and LibMTL, independent reference implementations.

`tests/fixtures/loss_mtl_reference.json` holds what TorchJD 0.18.0 (torch
2.13.0; `torchjd.scalarization.FAMO`, `STCH`, `IMTLL`) and LibMTL's latest
source (`LibMTL/weighting/FAMO.py`, `STCH.py`) compute, in float64, on four
seeded sequences of loss vectors: K = 2 terms near 1, K = 3 terms at the
scales 1e-6, 1 and 1e6, K = 5 terms log-uniform in [1e-6, 1e6], and K = 3
with a term that reaches 0. The weights are the gradient of each reference's
scalarized loss with respect to the loss values. The fixture and its
generator (`tests/fixtures/generate_loss_mtl_reference.py`, which needs
PyTorch and TorchJD) are committed; this module needs neither.

keras_balance runs in float32. Every weight vector agrees with the
reference to a cosine similarity of at least 0.9999 and to a relative error
of 1e-4 (plus an absolute 1e-7 of the largest weight) where the reference is
exact. Where keras_balance deliberately differs, the test states and checks
by how much:

- FAMO: the references update the logits with the losses of the next step
  (the single-forward variant keras_balance implements: step t updates from
  `L(t-1)` to `L(t)`, then weights `L(t)`), so the weights and the logits
  agree at every step. TorchJD and LibMTL agree with each other too.
- STCH (LibMTL): LibMTL's total is `K mu log sum_i exp(log(L_i / n_i) / mu)`
  with the preference 1; keras_balance with `preference=[1] * K`,
  `normalization="log_nadir"` and `warmup_epochs=2` (LibMTL's
  `STCH_warmup_epoch=1`) gives weights exactly K times smaller after the
  warm-up (the same direction) and the same `1 / (L_i + eps)` during it,
  with the same nadir point.
- IMTL-L: LibMTL's IMTL is the hybrid of IMTL-L and IMTL-G (it needs the
  per-task gradients), so only TorchJD's IMTL-L is compared, trained by
  plain SGD on its log-scales, as keras_balance's are here.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_balance.balancers import FAMO, IMTLL, STCH

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "loss_mtl_reference.json"
REFERENCE = json.loads(FIXTURE.read_text(encoding="utf-8"))
SEQUENCES = REFERENCE["sequences"]


def cases(method):
    return [pytest.param(case, id=f"{case['source']}-{case['sequence']}-{index}")
            for index, case in enumerate(REFERENCE[method])]


def assert_agree(got, expected, what):
    got, expected = np.asarray(got, "float64"), np.asarray(expected, "float64")
    assert got.shape == expected.shape, what
    for t, (a, b) in enumerate(zip(got, expected)):
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cosine >= 0.9999, f"{what}, step {t}: cosine {cosine}"
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7 * np.max(np.abs(b)), err_msg=f"{what}, step {t}")


def test_the_fixture_comes_from_the_pinned_versions():
    assert REFERENCE["versions"]["torch"].startswith("2.13.0")
    assert REFERENCE["versions"]["torchjd"] == "0.18.0"
    assert {case["source"] for case in REFERENCE["famo"]} == {"torchjd", "libmtl"}
    # The scales span 1e-6 to 1e6, and one sequence has a zero loss.
    values = np.concatenate([np.ravel(s) for s in SEQUENCES.values()])
    assert values.min() == 0.0 and values[values > 0].min() < 1e-5 and values.max() > 1e5


@pytest.mark.parametrize("case", cases("famo"))
def test_famo_follows_the_reference_step_by_step(case):
    arguments = case["arguments"]
    balancer = FAMO(learning_rate=arguments["lr"], weight_decay=arguments["weight_decay"],
                    min_losses=arguments.get("min_losses"))
    weights, logits = [], []
    for losses in SEQUENCES[case["sequence"]]:
        weights.append(balancer(tf.constant(losses, "float32")).numpy())
        logits.append(balancer.logits.numpy())
    assert_agree(weights, case["weights"], "weights")
    # The reference records the logits after `update(L(t+1))`, which keras_balance makes at step t+1.
    np.testing.assert_allclose(logits[1:], case["logits"][:-1], rtol=1e-4, atol=1e-5)


def test_torchjd_and_libmtl_famo_agree_with_each_other():
    by_key = {}
    for case in REFERENCE["famo"]:
        key = (case["sequence"], json.dumps(case["arguments"], sort_keys=True))
        by_key.setdefault(key, {})[case["source"]] = case
    pairs = [pair for pair in by_key.values() if len(pair) == 2]
    assert len(pairs) == 8
    for pair in pairs:
        np.testing.assert_allclose(pair["torchjd"]["weights"], pair["libmtl"]["weights"], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("case", [c for c in cases("stch") if c.values[0]["source"] == "torchjd"])
def test_stch_matches_torchjd(case):
    arguments = case["arguments"]
    balancer = STCH(mu=arguments["mu"], preference=arguments.get("weights"), ideal_point=arguments.get("reference"))
    weights = [balancer(tf.constant(losses, "float32")).numpy() for losses in SEQUENCES[case["sequence"]]]
    assert_agree(weights, case["weights"], f"mu={arguments['mu']}")


@pytest.mark.parametrize("case", [c for c in cases("stch") if c.values[0]["source"] == "libmtl"])
def test_stch_log_nadir_is_libmtl_divided_by_k(case):
    sequence = SEQUENCES[case["sequence"]]
    k, per_epoch = len(sequence[0]), case["steps_per_epoch"]
    warmup = case["arguments"]["STCH_warmup_epoch"] + 1
    balancer = STCH(mu=case["arguments"]["STCH_mu"], preference=[1.0] * k, normalization="log_nadir",
                    warmup_epochs=warmup)
    weights = []
    for t, losses in enumerate(sequence):
        weights.append(balancer(tf.constant(losses, "float32")).numpy())
        if t % per_epoch == per_epoch - 1:
            balancer.end_epoch()
    expected = np.asarray(case["weights"])
    first_stch_step = warmup * per_epoch
    assert_agree(weights[:first_stch_step], expected[:first_stch_step], "warm-up")
    assert_agree(np.asarray(weights[first_stch_step:]) * k, expected[first_stch_step:], "STCH times K")
    np.testing.assert_allclose(balancer.nadir.numpy(), case["nadir"], rtol=1e-6)


@pytest.mark.parametrize("case", cases("imtl_l"))
def test_imtl_l_trained_by_sgd_matches_torchjd(case):
    lr = case["arguments"]["lr"]
    balancer = IMTLL()
    weights, log_scales = [], []
    for losses in SEQUENCES[case["sequence"]]:
        with tf.GradientTape() as tape:
            total, used = balancer.combine(tf.constant(losses, "float32"))
        (gradient,) = tape.gradient(total, balancer.trainable_variables)
        balancer.log_scale.assign_sub(lr * gradient)
        weights.append(used.numpy())
        log_scales.append(balancer.log_scale.numpy())
    assert_agree(weights, case["weights"], f"lr={lr}")
    np.testing.assert_allclose(log_scales, case["log_scale"], rtol=1e-5, atol=1e-6)
