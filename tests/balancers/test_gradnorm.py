"""Tests of `GradNorm` against an independent float64 reference of Algorithm 1.

    G_i = w_i ||g_i||,  target_i = mean(G) * r_i^alpha,  r_i = (L_i/L_i(0)) / mean_j(L_j/L_j(0))
    dL_grad/dw_i = sign(G_i - target_i) ||g_i||
    w <- max(w - lr * update, min_weight);  w <- K w / sum(w)
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_balance.balancers import GradNorm


def reference(jacobians, losses, alpha, lr, optimizer="sgd", min_weight=1e-3):
    k = len(losses[0])
    w = np.ones(k)
    m = np.zeros(k)
    v = np.zeros(k)
    used = []
    initial = np.asarray(losses[0], float)
    for t, (jac, loss) in enumerate(zip(jacobians, losses)):
        used.append(w.copy())
        norms = np.linalg.norm(jac, axis=1)
        ratio = np.asarray(loss) / initial
        rate = ratio / ratio.mean()
        big_g = w * norms
        target = big_g.mean() * rate**alpha
        grad = np.sign(big_g - target) * norms
        if optimizer == "adam":
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad**2
            step = (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(v / (1 - 0.999 ** (t + 1))) + 1e-7)
        else:
            step = grad
        w = np.maximum(w - lr * step, min_weight)
        w = k * w / w.sum()
    return np.array(used), w


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_matches_reference_over_steps(optimizer):
    rng = np.random.default_rng(0)
    jacobians = [rng.normal(size=(3, 6)) * [[1.0], [5.0], [0.2]] for _ in range(6)]
    losses = [rng.uniform(0.5, 2.0, size=3) for _ in range(6)]
    balancer = GradNorm(alpha=0.12, learning_rate=0.05, optimizer=optimizer)
    got = [balancer.weigh(j, l).numpy() for j, l in zip(jacobians, losses)]
    used, final = reference(jacobians, losses, 0.12, 0.05, optimizer)
    np.testing.assert_allclose(got, used, rtol=1e-5)
    np.testing.assert_allclose(balancer.task_weights.numpy(), final, rtol=1e-5)
    np.testing.assert_allclose(balancer.task_weights.numpy().sum(), 3.0, rtol=1e-6)


def test_weights_move_towards_equal_gradient_norms():
    # Term 0's gradient is 10x larger at equal training rates: its weight must fall.
    balancer = GradNorm(alpha=1.5, learning_rate=0.01, optimizer="sgd")
    jacobian = np.array([[10.0, 0.0], [0.0, 1.0]])
    for _ in range(60):
        balancer.weigh(jacobian, [1.0, 1.0])
    w = balancer.task_weights.numpy()
    assert w[0] < 0.3 and w[1] > 1.7
    scaled = w * np.array([10.0, 1.0])
    assert abs(scaled[0] - scaled[1]) / scaled.mean() < 0.25


def test_slow_task_gets_more_weight():
    # Equal gradient norms; term 1's loss falls less (higher training rate) -> more weight.
    balancer = GradNorm(alpha=1.5, learning_rate=0.01, optimizer="sgd")
    jacobian = np.eye(2)
    balancer.weigh(jacobian, [1.0, 1.0])
    for _ in range(20):
        balancer.weigh(jacobian, [0.2, 0.9])
    w = balancer.task_weights.numpy()
    assert w[1] > w[0]


def test_needs_losses():
    with pytest.raises(ValueError, match="loss"):
        GradNorm().weigh(np.eye(2))


def test_graph_xla_and_scales():
    for jit in (False, True):
        balancer = GradNorm(alpha=1.5, learning_rate=0.1, optimizer="sgd")

        @tf.function(jit_compile=jit)
        def run(j, l):
            return balancer.aggregate(j, l)

        for scale in (1e-10, 1.0, 1e10):
            out = run(tf.constant([[3.0 * scale, 0.0], [0.0, scale]], tf.float64), tf.constant([1.0, 1.0], tf.float64))
            assert np.all(np.isfinite(out.numpy()))
        assert np.all(balancer.task_weights.numpy() > 0)


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_learning_rate_must_be_positive(lr):
    with pytest.raises(ValueError, match="learning_rate.*positive"):
        GradNorm(learning_rate=lr)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"alpha": -1.0}, "alpha"), ({"optimizer": "rmsprop"}, "optimizer"), ({"min_weight": 0.0}, "min_weight")],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GradNorm(**kwargs)
    with pytest.raises(TypeError, match="layer"):
        GradNorm(layer=3)
