"""Tests of `partial_derivatives`, `parse_derivative` and `mlp`."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_balance.pinn import mlp, parse_derivative, partial_derivatives


def fn(x, y):
    return tf.sin(2.0 * x) * tf.exp(y) + x**3 * y**2


def analytic(x, y):
    s, c, e = np.sin(2 * x), np.cos(2 * x), np.exp(y)
    return {
        "": s * e + x**3 * y**2,
        "x": 2 * c * e + 3 * x**2 * y**2,
        "y": s * e + 2 * x**3 * y,
        "xx": -4 * s * e + 6 * x * y**2,
        "xy": 2 * c * e + 6 * x**2 * y,
        "yx": 2 * c * e + 6 * x**2 * y,
        "yy": s * e + 2 * x**3,
        "xxy": -4 * s * e + 12 * x * y,
        "xxxx": 16 * s * e,
        "xxyy": -4 * s * e + 12 * x,
        "yyyy": s * e,
    }


ALL_ORDERS = ["", "x", "y", "xx", "xy", "yy", "xxxx", "xxyy", "yyyy"]


def points(dtype, n=25, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.5, 1.5, (n, 1))
    y = rng.uniform(-1.0, 1.0, (n, 1))
    return x.astype(dtype), y.astype(dtype)


def check(values, orders, x, y, rtol, atol):
    """The derivatives hold the closed form, with the shape and the dtype of the points."""
    expected = analytic(x.astype("float64"), y.astype("float64"))
    assert set(values) == set(orders)
    for order in orders:
        assert values[order].dtype == tf.as_dtype(x.dtype), order
        value = np.asarray(values[order])
        assert value.shape == (len(x), 1), order
        np.testing.assert_allclose(value, expected[order], rtol=rtol, atol=atol, err_msg=repr(order))


@pytest.mark.parametrize(
    "orders",
    [ALL_ORDERS, [""], ["xx"], ["xy"], ["yx"], ["xxyy"], ["yyyy", "x"], ["xxy", "xy", "y"], ["xxxx", "xx", ""]],
    ids=lambda o: "-".join(x or "u" for x in o),
)
def test_closed_form_float64(orders):
    x, y = points("float64")
    values = partial_derivatives(fn, tf.constant(x), tf.constant(y), orders)
    check(values, orders, x, y, rtol=1e-12, atol=1e-12)


def test_closed_form_float32():
    x, y = points("float32")
    values = partial_derivatives(fn, tf.constant(x), tf.constant(y), ALL_ORDERS)
    check(values, ALL_ORDERS, x, y, rtol=1e-4, atol=1e-4)


def test_result_keeps_requested_order_and_duplicates():
    x, y = points("float64", n=4)
    values = partial_derivatives(fn, tf.constant(x), tf.constant(y), ["yy", "x", "yy"])
    assert list(values) == ["yy", "x"]
    check(values, ["yy", "x"], x, y, rtol=1e-12, atol=1e-12)


def test_unconnected_coordinate_gives_zeros():
    x, y = points("float64", n=6)
    values = partial_derivatives(lambda a, b: a**4, tf.constant(x), tf.constant(y), ["", "y", "xy", "xx", "xxxx", "yyyy"])
    np.testing.assert_allclose(values[""].numpy(), x**4)
    np.testing.assert_allclose(values["xx"].numpy(), 12 * x**2, rtol=1e-12)
    np.testing.assert_allclose(values["xxxx"].numpy(), 24.0, rtol=1e-12)
    for order in ("y", "xy", "yyyy"):
        assert values[order].shape == (6, 1)
        np.testing.assert_array_equal(values[order].numpy(), 0.0)


def test_rows_are_independent_of_batch():
    x, y = points("float64", n=10)
    full = partial_derivatives(fn, tf.constant(x), tf.constant(y), ["xxyy"])["xxyy"].numpy()
    single = partial_derivatives(fn, tf.constant(x[3:4]), tf.constant(y[3:4]), ["xxyy"])["xxyy"].numpy()
    np.testing.assert_allclose(single, full[3:4], rtol=1e-12)


def test_counts_gradient_calls(monkeypatch):
    # The documented cost: u_xxxx, u_xxyy, u_yyyy need 10 gradient calls.
    calls = []
    original = tf.GradientTape.gradient

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tf.GradientTape, "gradient", counting)
    x, y = points("float64", n=3)
    partial_derivatives(fn, tf.constant(x), tf.constant(y), ["", "xx", "yy", "xxxx", "xxyy", "yyyy"])
    assert len(calls) == 10


@pytest.mark.parametrize("jit_compile", [False, True])
def test_inside_tf_function(jit_compile):
    x, y = points("float64", n=12)
    orders = ["", "xx", "xy", "yy", "xxxx", "xxyy", "yyyy"]

    @tf.function(jit_compile=jit_compile)
    def compute(a, b):
        values = partial_derivatives(fn, a, b, orders)
        return [values[order] for order in orders]

    results = compute(tf.constant(x), tf.constant(y))
    check(dict(zip(orders, results)), orders, x, y, rtol=1e-10, atol=1e-10)


def test_inside_tf_function_with_network():
    network = mlp(width=8, depth=2, seed=0)
    x, y = points("float32", n=7)

    def field(a, b):
        return network(tf.concat([a, b], axis=1))

    eager = partial_derivatives(field, tf.constant(x), tf.constant(y), ["", "xx", "yy"])
    graph = tf.function(lambda a, b: partial_derivatives(field, a, b, ["", "xx", "yy"]))(tf.constant(x), tf.constant(y))
    for order in ("", "xx", "yy"):
        np.testing.assert_allclose(graph[order].numpy(), eager[order].numpy(), rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(eager["xx"].numpy())) > 0  # a tanh network is not linear


# -- parse_derivative ------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("u", ("u", "")),
        ("w", ("w", "")),
        ("u_x", ("u", "x")),
        ("u_xx", ("u", "xx")),
        ("u_yy", ("u", "yy")),
        ("w_xxyy", ("w", "xxyy")),
        ("u_yx", ("u", "xy")),
        ("w_yxyx", ("w", "xxyy")),
        ("w_yyyy", ("w", "yyyy")),
        ("phi_xy", ("phi", "xy")),
    ],
)
def test_parse_derivative(name, expected):
    assert parse_derivative(name) == expected


def test_parse_derivative_custom_coordinates():
    assert parse_derivative("u_xt", coordinates=("t", "x")) == ("u", "tx")
    with pytest.raises(ValueError, match=re.escape("'u_y'")):
        parse_derivative("u_y", coordinates=("t", "x"))


@pytest.mark.parametrize("name", ["u_xz", "_xx", "_", "", "u_x_y", "u_X", "u_ x"])
def test_parse_derivative_invalid(name):
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        parse_derivative(name)


# -- mlp -------------------------------------------------------------------------


@pytest.mark.parametrize("input_dim, output_dim, width, depth", [(2, 1, 8, 2), (3, 4, 5, 1), (2, 1, 50, 4)])
def test_mlp_shapes(input_dim, output_dim, width, depth):
    model = mlp(input_dim, output_dim, width=width, depth=depth, seed=1)
    assert isinstance(model, keras.Model)
    out = model(np.zeros((5, input_dim), "float32"))
    assert tuple(out.shape) == (5, output_dim)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == depth + 1
    assert [layer.units for layer in dense] == [width] * depth + [output_dim]
    assert model.count_params() == (
        (input_dim + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * output_dim
    )
    # Zero biases at initialization, so the output at the origin is zero.
    for layer in dense:
        np.testing.assert_array_equal(layer.bias.numpy(), 0.0)
    np.testing.assert_array_equal(out.numpy(), 0.0)


def test_mlp_seeded_initialization_is_reproducible():
    a = mlp(width=16, depth=3, seed=7)
    b = mlp(width=16, depth=3, seed=7)
    c = mlp(width=16, depth=3, seed=8)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    kernels_a = [w for w in a.get_weights() if w.ndim == 2]
    kernels_c = [w for w in c.get_weights() if w.ndim == 2]
    assert all(not np.array_equal(ka, kc) for ka, kc in zip(kernels_a, kernels_c))
    # Each layer gets its own seed: the hidden kernels of equal shape differ.
    assert not np.array_equal(kernels_a[1], kernels_a[2])
    points = np.random.default_rng(0).uniform(-1, 1, (9, 2)).astype("float32")
    np.testing.assert_array_equal(a(points).numpy(), b(points).numpy())
    assert not np.allclose(a(points).numpy(), c(points).numpy())


def test_mlp_unseeded_differs_and_glorot_scale():
    a = mlp(width=64, depth=2)
    b = mlp(width=64, depth=2)
    assert not np.array_equal(a.get_weights()[0], b.get_weights()[0])
    kernel = mlp(width=200, depth=2, seed=3).get_weights()[2]  # 200 x 200 hidden kernel
    # Glorot normal: std sqrt(2 / (fan_in + fan_out)), truncated at 2 std (factor ~0.88).
    assert 0.8 * np.sqrt(2 / 400) < kernel.std() < 1.05 * np.sqrt(2 / 400)


def test_mlp_activation_and_name():
    model = mlp(width=4, depth=2, activation="relu", seed=0, name="net")
    assert model.name == "net"
    hidden = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][:-1]
    assert all(layer.activation is keras.activations.relu for layer in hidden)
    assert mlp(width=4, depth=1, seed=0).get_layer("hidden_0").activation is keras.activations.tanh


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"width": 0}, "width"),
        ({"width": -5}, "width"),
        ({"width": 2.5}, "width"),
        ({"width": 8.0}, "width"),
        ({"width": True}, "width"),
        ({"depth": 0}, "depth"),
        ({"depth": "2"}, "depth"),
        ({"input_dim": 0}, "input_dim"),
        ({"output_dim": None}, "output_dim"),
    ],
)
def test_mlp_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=re.escape(f"`{name}`")):
        mlp(**kwargs)
