"""BalancedModel and the registry on bad input: owners, names, options that do not apply.

A balancer holds the state of one training run; two owners would advance it
with each other's losses. The second owner gets an error that names the
first.
"""

import pytest

import keras_balance as kb
from keras_balance import balancers


def network():
    pde = kb.HelmholtzPDE()
    return pde, kb.build_pinn(pde, width=4, depth=1, seed=0)


def test_one_balancer_in_two_losses_is_an_error():
    pde, _ = network()
    balancer = balancers.get("relobralo", seed=0)
    first = kb.BalancedLoss(pde, balancer, name="first_loss")
    with pytest.raises(ValueError, match="'relobralo' already balances the loss 'first_loss'.*from_config"):
        kb.BalancedLoss(pde, balancer)
    assert first.balancer is balancer


def test_a_models_balancer_in_a_loss_is_an_error():
    pde, net = network()
    balancer = balancers.get("relobralo", seed=0)
    model = kb.PINNModel(pde, net, balancer=balancer, name="trainer")
    with pytest.raises(ValueError, match="already balances the model 'trainer'"):
        kb.BalancedLoss(pde, balancer)
    assert model.balancer is balancer


def test_a_losses_balancer_in_a_model_is_an_error():
    pde, net = network()
    loss = kb.ReLoBRaLoLoss(pde, seed=0, name="article_loss")
    with pytest.raises(ValueError, match="already balances the loss 'article_loss'"):
        kb.PINNModel(pde, net, balancer=loss.balancer)


def test_a_copy_is_a_new_owner():
    pde, _ = network()
    balancer = balancers.get("relobralo", seed=0)
    kb.BalancedLoss(pde, balancer)
    copy = type(balancer).from_config(balancer.get_config())
    assert kb.BalancedLoss(pde, copy).balancer is copy


def plain_model(name):
    import keras

    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)], name=name)


def test_one_loss_compiled_into_two_models_is_an_error_naming_both():
    import numpy as np

    loss = kb.BalancedLoss(lambda t, p: [(t - p) ** 2, p**2], "relobralo", num_terms=2, name="shared_loss")
    xy = np.random.default_rng(0).uniform(-1, 1, (16, 2)).astype("float32")
    first, second = plain_model("first_net"), plain_model("second_net")
    for model in (first, second):
        model.compile(optimizer="adam", loss=loss)
    first.fit(xy, xy[:, :1], epochs=2, batch_size=8, verbose=0)
    first.evaluate(xy, xy[:, :1], verbose=0)  # the same model may call it again
    step = int(loss.balancer.step.numpy())
    with pytest.raises(ValueError, match="'shared_loss'.*already trains the model 'first_net'.*'second_net'"):
        second.fit(xy, xy[:, :1], epochs=1, batch_size=8, verbose=0)
    assert int(loss.balancer.step.numpy()) == step  # the second model advanced nothing
    copy = kb.BalancedLoss(lambda t, p: [(t - p) ** 2, p**2], "relobralo", num_terms=2)
    second.compile(optimizer="adam", loss=copy)
    second.fit(xy, xy[:, :1], epochs=1, batch_size=8, verbose=0)
    assert int(copy.balancer.step.numpy()) == 2


def test_one_method_loss_in_two_models_is_an_error():
    pde = kb.HelmholtzPDE()
    loss = kb.ReLoBRaLoLoss(pde, seed=0, name="article_loss")
    xy = pde.sample(n_interior=16, n_boundary=8, seed=0)
    nets = [kb.build_pinn(pde, width=4, depth=1, seed=s) for s in (0, 1)]
    for net in nets:
        net.compile(optimizer="adam", loss=loss)
    nets[0].fit(xy, xy, batch_size=len(xy), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="'article_loss'.*already trains the model"):
        nets[1].fit(xy, xy, batch_size=len(xy), epochs=1, verbose=0)
    assert int(loss.balancer.step.numpy()) == 1


# -- term names and History keys ---------------------------------------------------------------


@pytest.mark.parametrize("names, clash", [(("loss", "b"), "'loss' \\(also the weighted total\\)"),
                                          (("b", "w_b"), "'w_b' \\(also the weight of term 'b'\\)"),
                                          (("skipped_steps", "b"), "'skipped_steps'")])
def test_a_term_name_that_is_a_history_key_is_an_error(names, clash):
    import keras

    inputs = keras.Input((2,))
    with pytest.raises(ValueError, match=f"term_names.*{clash}"):
        kb.BalancedModel(inputs, keras.layers.Dense(1)(inputs), term_names=names)


def test_a_term_name_that_is_a_compiled_metric_is_an_error():
    import keras

    inputs = keras.Input((2,))
    model = kb.BalancedModel(inputs, {"a": keras.layers.Dense(1)(inputs), "b": keras.layers.Dense(1)(inputs)})
    with pytest.raises(ValueError, match="'mae' \\(also the compiled metric 'mae'\\)"):
        model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"}, term_names=("mae", "b"), metrics=["mae"])
    model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"}, metrics=["mae"])  # distinct names are fine
    assert model.term_names == ("a", "b")


# -- options that do not apply, terms that cannot be trained ----------------------------------


def two_outputs():
    import keras

    inputs = keras.Input((2,))
    return kb.BalancedModel(inputs, {"a": keras.layers.Dense(1)(inputs), "b": keras.layers.Dense(1)(inputs)})


@pytest.mark.parametrize("options", [{"jacobian_mode": "features"}, {"jacobian_mode": "vectorized"}])
def test_a_jacobian_mode_for_a_loss_level_balancer_is_an_error(options):
    model = two_outputs()
    with pytest.raises(ValueError, match="loss-level.*jacobian_mode='(features|vectorized)'"):
        model.compile(optimizer="adam", loss="mse", balancer="relobralo", **options)
    model.compile(optimizer="adam", loss="mse", balancer="relobralo", jacobian_mode="loop")  # the default: fine


class Disconnected(kb.BalancedModel):
    term_names = ("fit", "constant")

    def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
        import keras

        return [keras.ops.mean((y_pred - y) ** 2), keras.ops.mean(y ** 2)]


def disconnected(balancer):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((2,))
    return Disconnected(inputs, keras.layers.Dense(1)(inputs), balancer=balancer)


def test_a_term_without_a_gradient_path_is_an_error_for_a_gradient_level_balancer():
    import numpy as np

    model = disconnected("mgda")
    model.compile(optimizer="adam")
    x = np.ones((4, 2), "float32")
    with pytest.raises(ValueError, match=r"terms \['constant'\] have no gradient path"):
        model.fit(x, x[:, :1], epochs=1, verbose=0)


def test_a_term_without_a_gradient_path_is_weighted_and_logged_by_a_loss_level_balancer():
    """Documented behaviour: the term contributes nothing to the update and is logged as usual."""
    import numpy as np

    model = disconnected("sum")
    model.compile(optimizer="sgd")
    x = np.ones((4, 2), "float32")
    history = model.fit(x, 3 * x[:, :1], epochs=2, verbose=0).history
    np.testing.assert_allclose(history["constant"], [9.0, 9.0])
    assert history["fit"][1] < history["fit"][0]


# -- the registry ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(balancers.available()))
def test_a_plain_config_dict_names_the_class_or_the_registered_name(name):
    original = balancers.example(name, 2, num_terms=2)
    for class_name in (type(original).__name__, name):
        copy = balancers.deserialize({"class_name": class_name, "config": original.get_config()})
        assert type(copy) is type(original) and copy.get_config() == original.get_config()
