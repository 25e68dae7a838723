"""The hand-written baseline trains exactly what PINNModel with Sum trains.

Its cost is only a fair baseline if it does the same work: the same network,
the same derivatives, the same loss and the same Adam steps. Starting from the
same weights, both must follow the same trajectory.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance as kb
from keras_balance.bench.handwritten import (HandWrittenStep, advection_columns, allen_cahn_columns,
                                             burgers_columns, helmholtz_columns, kirchhoff_columns)


@pytest.mark.parametrize("problem", [kb.HelmholtzPDE(), kb.HelmholtzPDE(boundary="per_edge"), kb.KirchhoffPDE()],
                         ids=["helmholtz", "helmholtz-per-edge", "kirchhoff"])
@pytest.mark.parametrize("per_term", [False, True], ids=["sum", "per-term"])
def test_the_hand_written_step_follows_pinnmodel_with_sum(problem, per_term):
    _follows_pinnmodel(problem, per_term)


@pytest.mark.parametrize("name", ["burgers", "allen_cahn", "poisson", "advection"])
def test_the_hand_written_step_follows_pinnmodel_on_the_newer_problems(name):
    """Including the periodic embedding of x (Allen-Cahn, advection)."""
    _follows_pinnmodel(kb.pde.get(name), False)


def _follows_pinnmodel(problem, per_term):
    """The per-term variant adds the terms' separate gradients: the same update, up to rounding."""
    points = problem.sample(64, 32, seed=0)
    keras.utils.set_random_seed(0)
    model = kb.PINNModel(problem, kb.build_pinn(problem, width=8, depth=2, seed=0), balancer="sum")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    hand_net = kb.build_pinn(problem, width=8, depth=2, seed=0).network
    hand = HandWrittenStep(problem, hand_net, 1e-3, jit_compile=False, per_term=per_term)
    model.fit(kb.full_batch(points), steps_per_epoch=5, epochs=1, verbose=0, shuffle=False)
    hand.run(points, steps=5)
    for ours, theirs in zip(model.solution.network.trainable_variables, hand_net.trainable_variables):
        np.testing.assert_allclose(theirs.numpy(), ours.numpy(), rtol=1e-4, atol=1e-6)
    assert not np.allclose(hand_net.trainable_variables[0].numpy(),
                           kb.build_pinn(problem, width=8, depth=2, seed=0).network.trainable_variables[0].numpy())


@pytest.mark.parametrize("columns, orders", [(helmholtz_columns, ["", "xx", "yy"]),
                                             (kirchhoff_columns, ["", "xx", "yy", "xxxx", "xxyy", "yyyy"])])
def test_hand_written_derivatives_are_the_closed_forms(columns, orders):
    """On f = sin(2x) exp(y) every derivative is known in closed form."""
    x = tf.constant(np.linspace(-1, 1, 7)[:, None], tf.float64)
    y = tf.constant(np.linspace(-0.5, 0.5, 7)[:, None], tf.float64)
    values = columns(lambda a, b: tf.sin(2 * a) * tf.exp(b), x, y)
    s, e = np.sin(2 * x.numpy()), np.exp(y.numpy())
    expected = {"": s * e, "xx": -4 * s * e, "yy": s * e, "xxxx": 16 * s * e, "xxyy": -4 * s * e, "yyyy": s * e}
    assert len(values) == len(orders)
    for value, order in zip(values, orders):
        np.testing.assert_allclose(value.numpy(), expected[order], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("columns, orders", [(burgers_columns, ["", "t", "x", "xx"]),
                                             (allen_cahn_columns, ["", "t", "xx"]),
                                             (advection_columns, ["", "t", "x"])])
def test_hand_written_time_derivatives_are_the_closed_forms(columns, orders):
    """On f = sin(2x) exp(t): the columns of the time-dependent problems (y is t)."""
    x = tf.constant(np.linspace(-1, 1, 7)[:, None], tf.float64)
    t = tf.constant(np.linspace(0, 1, 7)[:, None], tf.float64)
    values = columns(lambda a, b: tf.sin(2 * a) * tf.exp(b), x, t)
    s, c, e = np.sin(2 * x.numpy()), np.cos(2 * x.numpy()), np.exp(t.numpy())
    expected = {"": s * e, "t": s * e, "x": 2 * c * e, "xx": -4 * s * e}
    assert len(values) == len(orders)
    for value, order in zip(values, orders):
        np.testing.assert_allclose(value.numpy(), expected[order], rtol=1e-10, atol=1e-12)


def test_a_problem_without_a_hand_written_step_is_an_error():
    class Other(kb.HelmholtzPDE):
        pass

    with pytest.raises(ValueError, match="`problem` must be one of the problems with a hand-written step"):
        HandWrittenStep(Other(), kb.build_pinn(kb.HelmholtzPDE(), width=4, depth=1).network)
