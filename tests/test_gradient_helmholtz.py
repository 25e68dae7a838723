"""Every gradient-level balancer trains the Helmholtz problem through BalancedModel.

A smooth Helmholtz problem (a1 = a2 = 1), a 3 x 32 PINN, 256 + 128 points,
Adam(1e-2), 300 full-batch steps under XLA: the error against the exact
solution must fall below 3/4 of that of the untrained network (about 1),
without a NaN in any logged term or weight.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import default_or_slow

from keras_balance import balancers
from keras_balance.pde import HelmholtzPDE
from keras_balance.pinn import PINNModel, build_pinn

NAMES = sorted(n for n, cls in balancers.available().items() if cls.kind == balancers.GRADIENT_LEVEL)
# LR annealing with the paper's formula as printed (max |grad L_f| over
# mean |grad L_b|) gives the boundary a weight of 1e4..1e6 here, and within
# 300 steps the network collapses to u = 0 (error 1.0): it is checked
# separately below. The default (the authors' statistics, mean numerator) trains.
# MGDA on the raw gradients puts almost all its weight on the term with the
# smallest gradient (the boundary, about 1e-3 of the residual's), so the
# residual hardly trains (error 1.01 -> 0.94 in 300 steps); normalizing the
# gradients first ("l2", an option of the paper's code) trains.
OPTIONS = {"lr_annealing": {"mode": "mean"}, "mgda": {"normalization": "l2"}}
STEPS = 300


def train(name, options=None, mode="loop"):
    pde = HelmholtzPDE(a1=1.0, a2=1.0)
    keras.utils.set_random_seed(0)
    model = PINNModel(pde, build_pinn(pde, width=32, depth=3, seed=0),
                      balancer=balancers.get(name, **(options or {})))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True, jacobian_mode=mode)
    points = pde.sample(256, 128, seed=0)
    before = pde.error(model.solution.predict_field)["rel_l2"]
    history = model.fit(tf.data.Dataset.from_tensors(points).repeat(), steps_per_epoch=STEPS // 3, epochs=3,
                        verbose=0)
    after = pde.error(model.solution.predict_field)["rel_l2"]
    return before, after, history.history


@pytest.mark.parametrize("name", default_or_slow(NAMES, ("pcgrad", "mgda", "gradnorm")))
def test_trains_helmholtz(name):
    before, after, history = train(name, OPTIONS.get(name))
    for key, values in history.items():
        assert np.all(np.isfinite(values)), (key, values)
    assert after < 0.75 * before, (name, before, after)


def test_mgda_default_stays_finite():
    before, after, history = train("mgda")
    assert all(np.all(np.isfinite(v)) for v in history.values())
    assert after < before
    assert history["w_L_b"][-1] > 0.99  # nearly all weight on the boundary term


def test_lr_annealing_papers_formula_runs_away_but_stays_finite():
    before, after, history = train("lr_annealing", {"convention": "paper", "mode": "max"})
    for key, values in history.items():
        assert np.all(np.isfinite(values)), (key, values)
    assert after <= before
    assert history["w_L_b"][-1] > 1e3  # the boundary weight the paper's max statistic produces


def test_lr_annealing_default_keeps_the_boundary_weight_moderate():
    """The authors' statistics settle at the square root of the ratio: no runaway, and the error falls."""
    before, after, history = train("lr_annealing")
    assert 1.0 < history["w_L_b"][-1] < 1e3
    assert after < 0.75 * before


@pytest.mark.parametrize("name", ["upgrad", "mgda"])
def test_features_mode_trains_helmholtz(name):
    before, after, history = train(name, OPTIONS.get(name), mode="features")
    assert all(np.all(np.isfinite(v)) for v in history.values())
    assert after < 0.75 * before, (name, before, after)
