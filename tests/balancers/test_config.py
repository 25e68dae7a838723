"""Hand-computed values and properties of `keras_balance.balancers.ConFIG`.

ConFIG's direction has equal cosines with every gradient (in the ratios of the
preference vector) and the length of the sum of the gradients' projections.
"""

import numpy as np
import pytest
from helpers import assert_refused, full_rank

from keras_balance.balancers import ConFIG


def direction(jacobian, **options):
    return ConFIG(**options).aggregate(np.asarray(jacobian, "float64")).numpy()


def cosines(jacobian, d):
    return jacobian @ d / (np.linalg.norm(jacobian, axis=1) * np.linalg.norm(d))


def test_orthogonal_rows():
    # e = (1, 1) / sqrt(2); the projections 1/sqrt(2) and 2/sqrt(2) add to the length.
    np.testing.assert_allclose(direction([[1.0, 0.0], [0.0, 2.0]]), [1.5, 1.5], rtol=1e-12)


def test_equal_cosines_and_the_sum_of_projections():
    jacobian = np.array([[1.0, 0.2, 0.0, 0.3], [-0.8, 1.0, 0.1, 0.0], [0.3, -0.9, 1.0, 0.2]]) * [[1.0], [5.0], [0.2]]
    d = direction(jacobian)
    c = cosines(jacobian, d)
    np.testing.assert_allclose(c, c[0], rtol=1e-10)
    assert c[0] > 0
    unit = d / np.linalg.norm(d)
    np.testing.assert_allclose(np.linalg.norm(d), np.sum(jacobian @ unit), rtol=1e-10)


def test_preference_sets_the_ratios_of_the_cosines():
    jacobian = full_rank(3, 7, seed=2)
    preference = [1.0, 2.0, 0.5]
    c = cosines(jacobian, direction(jacobian, preference=preference))
    np.testing.assert_allclose(c / c[0], preference, rtol=1e-9)


def test_identical_rows_and_opposite_rows():
    row = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(direction(np.tile(row, (4, 1))), 4 * row, rtol=1e-10)
    np.testing.assert_array_equal(direction(np.stack([row, -row])), 0.0)


def test_a_zero_row_is_a_zero_unit_vector():
    # U = [[1, 0], [0, 0]]: the least-squares x of U x = (1, 1) is (1, 0); the length is 1.
    np.testing.assert_allclose(direction([[3.0, 0.0], [0.0, 0.0]]), [3.0, 0.0], rtol=1e-12)


def test_rank_deficient_rows_give_the_least_squares_direction():
    rng = np.random.default_rng(0)
    jacobian = rng.normal(size=(4, 2)) @ rng.normal(size=(2, 6))
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    best = np.linalg.pinv(units) @ np.ones(4)
    unit = best / np.linalg.norm(best)
    np.testing.assert_allclose(direction(jacobian), np.sum(jacobian @ unit) * unit, rtol=1e-8)


def test_scale_and_permutation():
    jacobian = full_rank(3, 5, seed=3)
    d = direction(jacobian)
    np.testing.assert_allclose(direction(1e-7 * jacobian), 1e-7 * d, rtol=1e-9)
    np.testing.assert_allclose(direction(jacobian[[2, 0, 1]]), d, rtol=1e-9)


def test_config_round_trip():
    balancer = ConFIG(preference=[1.0, 2.0], rcond=1e-8)
    config = balancer.get_config()
    assert config["preference"] == [1.0, 2.0] and config["rcond"] == 1e-8 and config["num_terms"] == 2
    assert ConFIG.from_config(config).get_config() == config


def test_arguments_are_checked():
    assert_refused(ConFIG, {"rcond": 1.0}, "rcond")
    assert_refused(ConFIG, {"preference": [0.0, 0.0]}, "preference")
    with pytest.raises(ValueError, match="built for 2 loss terms"):
        ConFIG(preference=[1.0, 2.0]).aggregate(np.eye(3))
