"""Tests of the PINN wrapper, `build_pinn` and `PINNModel`."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_balance.pde import HelmholtzPDE, KirchhoffPDE
from keras_balance.pinn import PINN, PINNModel, build_pinn, mlp
from keras_balance.pinn.derivatives import parse_derivative

PDES = {
    "helmholtz": HelmholtzPDE,
    "kirchhoff": KirchhoffPDE,
    "kirchhoff_rect": lambda: KirchhoffPDE(width=10.0, height=5.0),
}


def nested_derivative(field, x, y, order):
    """d^n field / d order, with one fresh tape per differentiation (no sharing)."""
    if not order:
        return field(x, y)
    variable = x if order[-1] == "x" else y
    with tf.GradientTape() as tape:
        tape.watch(variable)
        inner = nested_derivative(field, x, y, order[:-1])
    return tape.gradient(inner, variable)


def linear_network(kernel, bias=0.0):
    """A network computing kernel[0] * sx + kernel[1] * sy + bias of its scaled input."""
    inputs = keras.Input(shape=(2,))
    dense = keras.layers.Dense(1)
    network = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.array(kernel, "float32").reshape(2, 1), np.array([bias], "float32")])
    return network


@pytest.fixture
def float64_keras():
    old_floatx = keras.config.floatx()
    old_policy = keras.config.dtype_policy().name
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(old_floatx)
        keras.config.set_dtype_policy(old_policy)


# -- outputs and derivatives -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(PDES))
def test_output_columns_match_nested_tapes(name):
    pde = PDES[name]()
    model = build_pinn(pde, width=8, depth=2, seed=0)
    assert isinstance(model, PINN)
    assert model.derivative_names == pde.derivatives
    points = pde.sample(10, 8, seed=1)
    out = model(points)
    assert tuple(out.shape) == (18, len(pde.derivatives))
    assert len(pde.derivatives) == (3 if isinstance(pde, HelmholtzPDE) else 6)
    x, y = tf.constant(points[:, :1]), tf.constant(points[:, 1:])
    for column, derivative in enumerate(pde.derivatives):
        _, order = parse_derivative(derivative)
        expected = nested_derivative(model.field, x, y, order).numpy()
        got = out[:, column : column + 1].numpy()
        scale = np.max(np.abs(expected))
        assert scale > 0, derivative
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=derivative)


@pytest.mark.parametrize("name", sorted(PDES))
def test_output_columns_match_finite_differences_float64(name, float64_keras):
    pde = PDES[name]()
    model = build_pinn(pde, width=8, depth=2, seed=3)
    assert model.compute_dtype == "float64"
    (x0, x1), (y0, y1) = pde.domain
    rng = np.random.default_rng(2)
    pts = np.column_stack([rng.uniform(x0, x1, 12), rng.uniform(y0, y1, 12)])
    out = model(pts).numpy()
    assert out.dtype == np.float64
    hx, hy = 2e-3 * (x1 - x0), 2e-3 * (y1 - y0)

    def f(a, b):
        return model.predict_field(np.column_stack([a, b]))

    def d2x(g):
        return lambda a, b: (g(a + hx, b) - 2 * g(a, b) + g(a - hx, b)) / hx**2

    def d2y(g):
        return lambda a, b: (g(a, b + hy) - 2 * g(a, b) + g(a, b - hy)) / hy**2

    def d1x(g):
        return lambda a, b: (g(a + hx, b) - g(a - hx, b)) / (2 * hx)

    finite = {"": f, "xx": d2x(f), "yy": d2y(f), "xxxx": d2x(d2x(f)), "xxyy": d2x(d2y(f)), "yyyy": d2y(d2y(f)),
              "x": d1x(f)}
    for column, derivative in enumerate(pde.derivatives):
        _, order = parse_derivative(derivative)
        expected = finite[order](pts[:, 0], pts[:, 1])
        scale = np.max(np.abs(expected))
        np.testing.assert_allclose(out[:, column], expected, rtol=0, atol=2e-4 * scale, err_msg=derivative)


def test_predict_field_matches_column_zero():
    pde = KirchhoffPDE()
    model = build_pinn(pde, width=8, depth=2, seed=4, output_scale=0.02)
    points = pde.sample(20, 13, seed=0)
    field = model.predict_field(points, batch_size=7)  # several chunks, the last one short
    assert isinstance(field, np.ndarray) and field.shape == (33,)
    np.testing.assert_allclose(field, model(points)[:, 0].numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(model.predict_field(points), field, rtol=1e-6, atol=1e-10)


def test_compute_output_shape_and_symbolic_call():
    model = build_pinn(KirchhoffPDE(), width=4, depth=1, seed=0)
    assert model.compute_output_shape((None, 2)) == (None, 6)
    assert tuple(model(np.zeros((3, 2), "float32")).shape) == (3, 6)


def test_inside_tf_function_and_jit():
    pde = HelmholtzPDE()
    model = build_pinn(pde, width=8, depth=2, seed=5)
    points = tf.constant(pde.sample(6, 4, seed=0))
    eager = model(points).numpy()
    for jit in (False, True):
        graph = tf.function(lambda p: model(p), jit_compile=jit)(points).numpy()
        np.testing.assert_allclose(graph, eager, rtol=1e-4, atol=1e-4 * np.max(np.abs(eager)))


# -- input and output scaling ----------------------------------------------------


DOMAIN = ((2.0, 6.0), (-3.0, 5.0))


def test_input_scaling_identity_in_x():
    model = PINN(linear_network([1.0, 0.0]), ("u", "u_x", "u_y", "u_xx", "u_xy"), DOMAIN)
    points = np.array([[2.0, -3.0], [6.0, 5.0], [4.0, 1.0], [3.0, 0.0], [2.0, 5.0]], "float32")
    out = model(points).numpy()
    np.testing.assert_allclose(out[:, 0], [-1.0, 1.0, 0.0, -0.5, -1.0], atol=1e-6)
    np.testing.assert_allclose(out[:, 1], 2.0 / (6.0 - 2.0), rtol=1e-6)  # u_x
    np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-7)  # u_y
    np.testing.assert_allclose(out[:, 3:], 0.0, atol=1e-7)  # u_xx, u_xy
    x, y = tf.constant(points[:, :1]), tf.constant(points[:, 1:])
    np.testing.assert_allclose(model.field(x, y).numpy()[:, 0], out[:, 0], atol=1e-6)


def test_input_scaling_identity_in_y():
    model = PINN(linear_network([0.0, 1.0]), ("u", "u_x", "u_y"), DOMAIN)
    points = np.array([[2.0, -3.0], [6.0, 5.0], [3.0, 3.0]], "float32")
    out = model(points).numpy()
    np.testing.assert_allclose(out[:, 0], [-1.0, 1.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(out[:, 1], 0.0, atol=1e-7)
    np.testing.assert_allclose(out[:, 2], 2.0 / (5.0 - (-3.0)), rtol=1e-6)


def test_input_scaling_quadratic():
    # u = sx^2 + 3 sy^2 => u_xx = 2 / half_x^2, u_yy = 6 / half_y^2, u_xy = 0.
    inputs = keras.Input(shape=(2,))
    outputs = keras.layers.Lambda(lambda s: s[:, :1] ** 2 + 3.0 * s[:, 1:2] ** 2)(inputs)
    model = PINN(keras.Model(inputs, outputs), ("u", "u_xx", "u_xy", "u_yy", "u_xxyy"), DOMAIN)
    points = np.array([[2.0, -3.0], [5.0, 0.0]], "float32")
    out = model(points).numpy()
    np.testing.assert_allclose(out[:, 0], [1.0 + 3.0, 0.25 + 3.0 * 0.0625], rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], 2.0 / 2.0**2, rtol=1e-6)
    np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-7)
    np.testing.assert_allclose(out[:, 3], 6.0 / 4.0**2, rtol=1e-6)
    np.testing.assert_allclose(out[:, 4], 0.0, atol=1e-7)


@pytest.mark.parametrize("scale", [3.5, 1e-3, -2.0])
def test_output_scale_multiplies_field_and_derivatives(scale):
    pde = KirchhoffPDE()
    network = mlp(width=8, depth=2, seed=6)
    plain = PINN(network, pde.derivatives, pde.domain)
    scaled = PINN(network, pde.derivatives, pde.domain, output_scale=scale)
    assert scaled.output_scale == scale
    points = pde.sample(8, 8, seed=2)
    a, b = plain(points).numpy(), scaled(points).numpy()
    for column in range(6):
        np.testing.assert_allclose(b[:, column], scale * a[:, column], rtol=1e-5,
                                   atol=1e-6 * abs(scale) * np.max(np.abs(a[:, column])))
    np.testing.assert_allclose(scaled.predict_field(points), scale * plain.predict_field(points), rtol=1e-5,
                               atol=1e-7 * abs(scale))


def test_build_pinn_configuration():
    pde = KirchhoffPDE(width=10.0, height=5.0)
    model = build_pinn(pde, width=6, depth=3, activation="sigmoid", seed=1, output_scale=0.5)
    assert model.name == "pinn"
    assert model.domain == ((0.0, 10.0), (0.0, 5.0))
    assert model.output_scale == 0.5
    assert model.orders == ("", "xx", "yy", "xxxx", "xxyy", "yyyy")
    dense = [layer for layer in model.network.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [6, 6, 6, 1]
    assert dense[0].activation is keras.activations.sigmoid
    again = build_pinn(pde, width=6, depth=3, activation="sigmoid", seed=1, output_scale=0.5)
    points = pde.sample(5, 4, seed=0)
    np.testing.assert_array_equal(model(points).numpy(), again(points).numpy())


# -- argument checks -------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 3), (5, 1), (5,), (2, 5, 2)])
def test_wrong_input_shape(shape):
    model = build_pinn(HelmholtzPDE(), width=4, depth=1, seed=0)
    with pytest.raises(ValueError, match=re.escape("(N, 2)")):
        model(np.zeros(shape, "float32"))


@pytest.mark.parametrize(
    "derivatives, match",
    [
        (("u", "v_xx"), "one field"),
        (("u_xx", "u"), "start with the field"),
        ((), "`derivatives`"),
        (("u", "u_xz"), "'u_xz'"),
    ],
)
def test_bad_derivatives(derivatives, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        PINN(mlp(width=4, depth=1, seed=0), derivatives)


@pytest.mark.parametrize(
    "domain",
    [((1.0, 0.0), (0.0, 1.0)), ((0.0, 1.0), (2.0, 2.0)), ((0.0, 1.0),), ((0.0, 1.0), (0.0, 1.0), (0.0, 1.0)),
     "abc", None, ((0.0, "a"), (0.0, 1.0)), ((0.0, None), (0.0, 1.0)), ((0.0, 1.0, 2.0), (0.0, 1.0))],
)
def test_bad_domain(domain):
    with pytest.raises(ValueError, match="`domain`"):
        PINN(mlp(width=4, depth=1, seed=0), ("u",), domain)


def test_default_domain_and_column_order():
    model = PINN(linear_network([1.0, 3.0], bias=0.25), ("u", "u_xx", "u_y", "u_x"))
    assert model.domain == ((-1.0, 1.0), (-1.0, 1.0))
    out = model(np.array([[0.5, -0.25]], "float32")).numpy()
    np.testing.assert_allclose(out, [[0.5 - 0.75 + 0.25, 0.0, 3.0, 1.0]], atol=1e-6)


# -- serialization ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["helmholtz", "kirchhoff_rect"])
def test_config_round_trip(name):
    pde = PDES[name]()
    model = build_pinn(pde, width=8, depth=2, output_scale=0.7)  # unseeded: weights must be copied
    points = pde.sample(6, 6, seed=3)
    expected = model(points).numpy()
    config = model.get_config()
    assert config["derivatives"] == list(pde.derivatives)
    assert config["domain"] == [list(pair) for pair in pde.domain]
    assert config["output_scale"] == 0.7
    assert config["name"] == "pinn"
    clone = PINN.from_config(config)
    assert clone.derivative_names == model.derivative_names
    assert clone.domain == model.domain and clone.output_scale == model.output_scale and clone.name == "pinn"
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(points).numpy(), expected)
    # Through Keras' own (de)serialization as well.
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(revived, PINN)
    revived.set_weights(model.get_weights())
    np.testing.assert_array_equal(revived(points).numpy(), expected)


def test_config_round_trip_seeded_keeps_initial_weights():
    pde = HelmholtzPDE()
    model = build_pinn(pde, width=8, depth=2, seed=11)
    points = pde.sample(5, 5, seed=0)
    clone = PINN.from_config(model.get_config())
    np.testing.assert_array_equal(clone(points).numpy(), model(points).numpy())


# -- PINNModel -------------------------------------------------------------------


@pytest.mark.parametrize(
    "pde",
    [HelmholtzPDE(), HelmholtzPDE(boundary="per_edge", k=2.0), KirchhoffPDE()],
    ids=["helmholtz", "helmholtz_per_edge", "kirchhoff"],
)
def test_pinn_model_terms_are_batch_means(pde):
    solution = build_pinn(pde, width=8, depth=2, seed=0, output_scale=getattr(pde, "amplitude", 1.0))
    model = PINNModel(pde, solution=solution, balancer="sum")
    assert model.solution is solution
    assert model.term_names == pde.term_names
    assert model.num_terms == pde.num_terms
    points = pde.sample(16, 16, seed=1)
    y_pred = model(points)
    np.testing.assert_array_equal(y_pred.numpy(), solution(points).numpy())
    terms = model.compute_loss_terms(points, None, y_pred)
    assert len(terms) == pde.num_terms
    expected = [
        float(np.mean(t.numpy())) for t in pde.compute_loss(points[:, :1], points[:, 1:], solution(points))
    ]
    for name, got, want in zip(pde.term_names, terms, expected):
        assert got.shape == ()
        assert float(got) == pytest.approx(want, rel=1e-5), name
    assert all(float(t) > 0 for t in terms)  # an untrained network satisfies nothing


def test_pinn_model_default_solution():
    pde = HelmholtzPDE()
    model = PINNModel(pde)
    assert isinstance(model.solution, PINN)
    assert model.solution.derivative_names == pde.derivatives
    assert model.solution.domain == pde.domain
    assert tuple(model(pde.sample(3, 4, seed=0)).shape) == (7, 3)


def test_pinn_model_one_training_step_logs_terms():
    pde = HelmholtzPDE()
    model = PINNModel(pde, solution=build_pinn(pde, width=6, depth=1, seed=2), balancer="sum")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
    points = pde.sample(24, 8, seed=4)
    before = [float(t) for t in model.compute_loss_terms(points, None, model(points))]
    history = model.fit(points, None, batch_size=32, epochs=1, verbose=0)
    logs = {k: v[-1] for k, v in history.history.items()}
    assert {"loss", "L_f", "L_b", "w_L_f", "w_L_b"} <= set(logs)
    assert logs["L_f"] == pytest.approx(before[0], rel=1e-4)
    assert logs["L_b"] == pytest.approx(before[1], rel=1e-4)
    assert logs["w_L_f"] == pytest.approx(1.0) and logs["w_L_b"] == pytest.approx(1.0)
    assert logs["loss"] == pytest.approx(before[0] + before[1], rel=1e-4)
