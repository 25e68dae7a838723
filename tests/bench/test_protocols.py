"""Published protocols: the set-up each one gives a run, and the plateau rule."""

import keras
import numpy as np
import pytest

from keras_balance import bench
from keras_balance.bench.protocols import PROTOCOLS, PlateauSchedule


def test_wang2021_sets_the_papers_run_and_explicit_arguments_win():
    result = bench.train(protocol="wang2021", balancer="lr_annealing", steps=20, verbose=0, log_every=10,
                         width=8)
    settings = result.settings
    assert settings["protocol"] == "wang2021"
    assert settings["pde_options"] == {"k": 1.0, "a1": 1.0, "a2": 4.0, "boundary": "combined", "means": "own"}
    assert (settings["depth"], settings["width"]) == (3, 8)  # width given here
    assert (settings["n_interior"], settings["n_boundary"]) == (128, 512) and result.resample
    assert settings["lr_schedule"] == "exponential"
    # Adam 1e-3 decayed by 0.9 per 1000 steps, whatever the budget.
    assert settings["final_learning_rate"] == pytest.approx(1e-3 * 0.9 ** (20 / 1000))
    assert result.steps == 20 and result.term_names == ("L_f", "L_b")
    # The authors' code: LR annealing's max numerator (the package's default is the mean).
    assert result.model.balancer.mode == "max" and result.model.balancer.convention == "authors"


def test_bischof2021_trains_nine_terms_with_the_plateau_rule():
    result = bench.train(protocol="bischof2021", balancer="relobralo", steps=40, verbose=0, log_every=5,
                         plateau={"patience": 1, "factor": 0.1, "max_cuts": 2, "warmup_fraction": 0.0})
    assert len(result.term_names) == 9 and result.term_names[1:3] == ("L_b0_left", "L_b2_left")
    cuts = result.settings["plateau_cuts"]
    assert 1 <= len(cuts) <= 2
    assert cuts[0]["learning_rate"] == pytest.approx(1e-4, rel=1e-5)
    if len(cuts) == 2:  # two cuts in a row: the run stopped there
        assert result.settings["steps_run"] == cuts[1]["step"] < 40


def test_a_protocol_for_another_problem_is_an_error():
    with pytest.raises(ValueError, match="protocol 'bischof2021' trains 'kirchhoff'; received pde='helmholtz'"):
        bench.train("helmholtz", protocol="bischof2021", steps=1, verbose=0)
    with pytest.raises(ValueError, match="`protocol` must be one of"):
        bench.train(protocol="nope", steps=1, verbose=0)
    with pytest.raises(ValueError, match="`plateau` needs a constant learning rate"):
        bench.train(protocol="wang2021", steps=2, verbose=0, plateau={"patience": 1})


def test_protocols_are_complete():
    for name, spec in PROTOCOLS.items():
        assert spec.name == name and spec.pde in ("helmholtz", "kirchhoff") and spec.summary
        assert spec.settings["steps"] >= 40000


class _Model:
    def __init__(self):
        self.optimizer = keras.optimizers.Adam(1.0)
        self.optimizer.build([keras.Variable(0.0)])
        self.stop_training = False


def test_plateau_rule_cuts_restores_and_stops():
    """Patience 2, cut by 10, stop after 2 cuts in a row; the best network comes back at each cut."""
    network = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    rule = PlateauSchedule(["a", "b"], network, patience=2, factor=0.1, max_cuts=2, warmup_steps=0)
    rule.set_model(_Model())
    best = [w.copy() for w in network.get_weights()]
    values = [5.0, 4.0, 4.5, 4.5, 4.5, 4.5, 4.5]
    for epoch, value in enumerate(values):
        rule.on_epoch_end(epoch, {"a": value / 2, "b": value / 2})
        if epoch == 1:
            best = [w.copy() for w in network.get_weights()]
        network.set_weights([w + 1.0 for w in network.get_weights()])  # training moves the weights
        if rule.model.stop_training:
            break
    # Improvements at 0 and 1; no improvement at 2, 3 -> cut at 3; at 4, 5 -> cut at 5, the second: stop.
    assert [e["learning_rate"] for e in rule.events] == pytest.approx([0.1, 0.01])
    assert rule.model.stop_training and rule.stopped and epoch == 5
    rule.restore_best()
    for w, b in zip(network.get_weights(), best):
        np.testing.assert_array_equal(w, b)


def test_an_improvement_resets_the_cuts():
    """Patience 1, stop after 2 cuts in a row: cut, improve, cut, cut -> stop at the fourth evaluation after the first."""
    network = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    rule = PlateauSchedule(["a"], network, patience=1, factor=0.5, max_cuts=2)
    rule.set_model(_Model())
    for epoch, value in enumerate([3.0, 3.0, 2.0, 2.5, 2.5, 2.5]):
        rule.on_epoch_end(epoch, {"a": value})
        if rule.model.stop_training:
            break
    # Without the reset at epoch 2 the second cut (epoch 3) would have stopped the run.
    assert epoch == 4 and len(rule.events) == 3 and rule.best == 2.0
    assert rule.events[-1]["learning_rate"] == pytest.approx(0.125)
