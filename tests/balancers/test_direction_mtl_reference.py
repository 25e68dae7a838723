"""GradDrop, DB-MTL and ExcessMTL against TorchJD 0.18 and LibMTL (`tests/fixtures/direction_mtl_reference.json`).

The fixture was generated once by `tests/fixtures/generate_direction_mtl_reference.py`;
this test reads only the JSON. Every reference here is exact, so each direction must
agree to cosine >= 0.9999 and, in fact, to a relative error of 1e-5 (the per-column
state of DB-MTL and ExcessMTL is float32):

- GradDrop: TorchJD's directions with its own uniform draws replayed.
- DB-MTL: LibMTL's directions on sequences of five steps. LibMTL guards the ratio of
  norms with `+ 1e-8` where keras_balance guards only zero norms: a relative
  difference of about 1e-8.
- ExcessMTL: LibMTL's convention is `total="num_terms"` (weights start at 1, sum to
  K) with the default `first_step="ratio"`; TorchJD's is `total="one"` with
  `first_step="raw"` (the first step updates with the raw excess risk), and with
  `warmup_steps=2` the baseline is the mean of the first two steps. LibMTL divides by
  the baseline exactly where keras_balance and TorchJD add 1e-7: the weights differ
  by about 1e-7 relative, asserted below.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_balance.balancers import DBMTL, ExcessMTL, GradDrop

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "direction_mtl_reference.json").read_text())


def cosine(a, b):
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_same_direction(got, expected, rtol=1e-5):
    assert cosine(got, expected) >= 0.9999
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("case", range(len(FIXTURE["graddrop"])))
def test_graddrop_matches_torchjd_with_its_draws(case):
    entry = FIXTURE["graddrop"][case]
    jacobian = np.array(entry["jacobian"])
    balancer = GradDrop(leak=entry["leak"], seed=0)
    draws = tf.constant(entry["draws"], tf.float64)
    balancer.draws = lambda num_columns, dtype="float64": tf.cast(draws, dtype)
    got = balancer.aggregate(jacobian).numpy()
    np.testing.assert_allclose(got, entry["direction"], rtol=1e-12, atol=1e-12)
    assert cosine(got, entry["direction"]) >= 0.9999


@pytest.mark.parametrize("case", range(len(FIXTURE["db_mtl"])))
def test_db_mtl_matches_libmtl_over_a_sequence(case):
    entry = FIXTURE["db_mtl"][case]
    balancer = DBMTL(beta=entry["beta"], beta_sigma=entry["beta_sigma"])
    for jacobian, losses, expected in zip(entry["jacobians"], entry["losses"], entry["directions"]):
        assert_same_direction(balancer.aggregate(np.array(jacobian), losses).numpy(), expected)


@pytest.mark.parametrize("case", range(len(FIXTURE["excess_mtl"])))
def test_excess_mtl_matches_libmtl_and_torchjd_over_a_sequence(case):
    entry = FIXTURE["excess_mtl"][case]
    conventions = {
        "libmtl": dict(total="num_terms"),
        "torchjd": dict(first_step="raw"),
        "torchjd_warmup2": dict(warmup_steps=2),
    }
    for source, options in conventions.items():
        balancer = ExcessMTL(robust_step_size=entry["robust_step_size"], **options)
        steps = zip(entry["jacobians"], entry["losses"], entry[f"{source}_weights"], entry[f"{source}_directions"])
        for jacobian, losses, weights, direction in steps:
            got = balancer.aggregate(np.array(jacobian), losses).numpy()
            assert_same_direction(got, direction)
            np.testing.assert_allclose(balancer.term_weights.numpy(), weights, rtol=1e-5)
