"""Tests of `keras_balance.balancers.graddrop.GradDrop`: hand values, the purity, the draws and the leak."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_refused

from keras_balance.balancers import GradDrop
from keras_balance.balancers.seeds import counter_uniform


def with_draws(balancer, draws):
    balancer.draws = lambda num_columns, dtype="float64": tf.constant(draws, dtype)
    return balancer


def test_hand_values_with_given_draws():
    # Column 0: all positive (purity 1); column 1: +2 against -2 (purity 1/2);
    # column 2: -1 and -3 (purity 0); column 3: +3 against -1 (purity 3/4).
    jacobian = np.array([[1.0, 2.0, -1.0, 3.0], [2.0, -2.0, -3.0, -1.0]])
    # U = 0.6: column 1 keeps the negative side (0.5 < 0.6), column 3 the positive (0.75 > 0.6).
    balancer = with_draws(GradDrop(), [0.6, 0.6, 0.6, 0.6])
    np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(), [3.0, -2.0, -4.0, 3.0])
    # Term 0 keeps 1 + 1 + 9 of its 1 + 4 + 1 + 9; term 1 keeps 4 + 4 + 9 of 4 + 4 + 9 + 1.
    np.testing.assert_allclose(balancer.term_weights.numpy(), [11 / 15, 17 / 18], rtol=1e-6)
    # U = 0.4: column 1 now keeps the positive side, column 3 still the positive.
    balancer = with_draws(GradDrop(), [0.4, 0.4, 0.4, 0.8])
    np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(), [3.0, 2.0, -4.0, -1.0])


def test_leak_lets_a_share_of_the_dropped_gradient_through():
    jacobian = np.array([[1.0, 2.0], [-3.0, -2.0]])
    # Purity 1/4 and 1/2; U = 0.9 keeps the negative side in both columns.
    full = with_draws(GradDrop(leak=[0.5, 0.0]), [0.9, 0.9]).aggregate(jacobian).numpy()
    np.testing.assert_allclose(full, [0.5 * 1.0 - 3.0, 0.5 * 2.0 - 2.0])
    everything = with_draws(GradDrop(leak=1.0), [0.9, 0.9]).aggregate(jacobian).numpy()
    np.testing.assert_allclose(everything, jacobian.sum(axis=0))


def test_agreeing_gradients_pass_whole_and_zero_columns_stay_zero():
    jacobian = np.array([[1.0, -2.0, 0.0], [3.0, -0.5, 0.0]])
    for seed in range(5):
        balancer = GradDrop(seed=seed)
        np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(), jacobian.sum(axis=0))
        np.testing.assert_allclose(balancer.term_weights.numpy(), [1.0, 1.0])


def test_each_sign_is_kept_with_the_probability_of_its_purity():
    """The random part: over many columns (and steps), the positive side of a column of purity P wins a share P."""
    purity = np.array([0.1, 0.25, 0.5, 0.8])
    columns = np.repeat(purity, 1000)
    jacobian = np.stack([columns, columns - 1.0])  # sum 2P - 1, |.| sum 1: purity P
    balancer = GradDrop(seed=11)
    for step in range(2):
        share = (balancer.aggregate(jacobian).numpy() > 0.0).reshape(4, 1000).mean(axis=1)
        # Binomial standard deviation at most 0.5 / sqrt(1000) = 0.016: 3 of them.
        np.testing.assert_allclose(share, purity, atol=0.05)
    assert int(balancer.step.numpy()) == 2


def test_draws_are_a_function_of_seed_and_step_in_every_mode():
    eager = counter_uniform(tf.constant(3, tf.int64), tf.constant(9, tf.int64), 1000, tf.float64).numpy()
    xla = tf.function(lambda: counter_uniform(tf.constant(3, tf.int64), tf.constant(9, tf.int64), 1000, tf.float64),
                      jit_compile=True)().numpy()
    np.testing.assert_array_equal(eager, xla)
    other = counter_uniform(tf.constant(3, tf.int64), tf.constant(10, tf.int64), 1000, tf.float64).numpy()
    assert np.all((eager > 0) & (eager < 1)) and not np.array_equal(eager, other)
    assert abs(eager.mean() - 0.5) < 0.05 and abs(np.corrcoef(eager, other)[0, 1]) < 0.15
    a, b = GradDrop(seed=4, num_terms=2), GradDrop(seed=4, num_terms=2)
    np.testing.assert_array_equal(a.draws(7).numpy(), b.draws(7).numpy())


def test_config_round_trip():
    balancer = GradDrop(leak=[0.1, 0.2], seed=3)
    clone = GradDrop.from_config(balancer.get_config())
    assert (clone.leak, clone.seed, clone.combines_rows) == ([0.1, 0.2], 3, False)


@pytest.mark.parametrize("arguments, name", [
    (dict(leak=1.5), "leak"), (dict(leak=[0.1, -0.2]), "leak"), (dict(leak=[0.1], num_terms=2), "leak"),
    (dict(update_every=2), "update_every"),
])
def test_bad_arguments_are_refused(arguments, name):
    assert_refused(GradDrop, arguments, name)
