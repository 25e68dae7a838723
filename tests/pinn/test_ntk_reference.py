"""NTK traces and weights against an independent PyTorch computation (`ntk_reference.json`).

The fixture (`tests/fixtures/generate_ntk_reference.py`, torch 2.13.0,
float64) holds a seeded tanh network (width 8, depth 2), 40 Helmholtz
points (24 interior, 4 on each edge), and, for one boundary term and for one
term per edge, the NTK diagonal `||d r_j / d theta||^2` of every term
(`torch.autograd.grad` of each residual itself, one point at a time), the
traces with `means="batch"` and `"own"`, and the weights of the paper
(`sum_j tr_j / tr_k`) and of jaxpi (`mean_j tr_j / tr_k` of the own-point
means). keras_balance computes in float32, from `sqrt(r^2)` and
`tf.vectorized_map`. Measured when the fixture was written: the diagonal
to 3.6e-7 relative (and exactly 0 off each term's points), the traces to
7.2e-8, the weights to 7.9e-8 (asserted at 2e-6), cosines of the weight
vectors 1 to 1e-7 (asserted >= 0.9999).
"""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance as kb
from keras_balance.balancers import NTKWeighting
from keras_balance.pinn.ntk import ntk_diagonal

REFERENCE = json.loads((Path(__file__).resolve().parent.parent / "fixtures" / "ntk_reference.json").read_text())
CASES = {case["name"]: case for case in REFERENCE["cases"]}


def model_for(case):
    net = REFERENCE["network"]
    pde = kb.HelmholtzPDE(boundary=case["boundary"], **REFERENCE["pde"])
    solution = kb.build_pinn(pde, width=net["width"], depth=net["depth"], activation=net["activation"], seed=0,
                             output_scale=1.0)
    solution.network.set_weights([np.asarray(a, np.float32) for layer in net["layers"] for a in layer])
    return kb.PINNModel(pde, solution)


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# K = 5 (one term per edge) takes twice as long: in the slow suite.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "helmholtz_per_edge" else n
                                  for n in sorted(CASES)])
def test_traces_and_weights_match_the_reference(name):
    case = CASES[name]
    model = model_for(case)
    assert list(model.term_names) == case["term_names"]
    x = tf.constant(np.asarray(REFERENCE["points"], np.float32))
    diagonal, _ = ntk_diagonal(lambda rows: model.point_terms(rows)[1], x, model.trainable_variables)
    np.testing.assert_allclose(diagonal.numpy(), case["diagonal"], rtol=2e-6, atol=0.0)
    for means, numerator, weights in (("batch", "sum", "weights_paper"), ("own", "mean", "weights_jaxpi")):
        balancer = NTKWeighting(update_every=1, means=means, numerator=numerator, num_terms=len(case["term_names"]))
        traces = model.ntk_traces(x, balancer).numpy()
        np.testing.assert_allclose(traces, case[f"traces_{means}"], rtol=2e-6)
        balancer.update_traces(traces)
        ours = balancer(np.ones(len(traces), np.float32)).numpy()
        np.testing.assert_allclose(ours, case[weights], rtol=2e-6)
        assert cosine(ours, case[weights]) >= 0.9999
    # The two conventions differ: the edge terms' own means are N / n_k = 10 (combined) or 40 / 4 times larger.
    assert not np.allclose(case["weights_paper"], case["weights_jaxpi"], rtol=0.1)
