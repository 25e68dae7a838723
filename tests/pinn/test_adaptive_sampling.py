"""Residual-based adaptive sampling (RAD and RAR-D of Wu et al. 2023): the density, the draws, the
schedule of the redraws, the step that sees them without retracing, and resuming."""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance as kb
from keras_balance.pde import PDE, HelmholtzPDE
from keras_balance.pinn import sampling
from keras_balance.pinn.sampling import RAD, RARD, residual_density


class AbsXResidualPDE(PDE):
    """A problem whose residual is known in closed form for the field u = x: |r(x, y)| = x on [0, 1]^2."""

    term_names = ("L_f", "L_b")
    derivatives = ("u",)
    domain = ((0.0, 1.0), (0.0, 1.0))

    def residuals(self, x, y, fields):
        u = fields["u"]
        masks = self.boundary_masks(x, y)
        edge = tf.minimum(masks["left"] + masks["right"] + masks["bottom"] + masks["top"], 1.0)
        return [(1.0 - edge) * u**2, edge * u**2]

    def exact(self, x, y):
        return 0.0 * x

    def exact_preds(self, x, y):
        return 0.0 * x


def field_x(batch, training=False):
    """A stand-in for a model whose field is u = x (what the sampler calls)."""
    return batch[:, :1]


def small_model(pde, sampler, model_class=kb.PINNModel, **kwargs):
    return model_class(pde, kb.build_pinn(pde, width=8, depth=1, seed=0), sampler=sampler, **kwargs)


# -- the density and the draws ------------------------------------------------------------------


def test_density_by_hand():
    # |r| = (0, 1, 3): mean |r| = 4/3, q = (0, 3/4, 9/4) + 1, sum 6.
    np.testing.assert_allclose(residual_density([0.0, 1.0, 3.0], k=1, c=1), [1 / 6, 1.75 / 6, 3.25 / 6])
    # k = 2, c = 0: p = r^2 / sum r^2.
    np.testing.assert_allclose(residual_density([1.0, 2.0, 3.0], k=2, c=0), np.array([1, 4, 9]) / 14)
    # k = 0 is uniform, and so is a residual that vanishes everywhere.
    np.testing.assert_allclose(residual_density([0.1, 5.0, 2.0, 0.0], k=0, c=0), 0.25)
    np.testing.assert_allclose(residual_density(np.zeros(4), k=1, c=0), 0.25)
    # A large c tends to uniform.
    assert np.ptp(residual_density([0.0, 1.0, 3.0], k=1, c=1e6)) < 1e-5


@pytest.mark.parametrize("k, c, replace", [(1.0, 0.0, True), (2.0, 1.0, True), (1.0, 1.0, False)])
def test_draws_follow_the_density_of_a_closed_form_residual(k, c, replace):
    """Drawn points' frequencies per x-bin match p on the fixed candidates (|r| = x): exactly p with
    replacement, and within the same tolerance without (20,000 candidates, 4,000 draws)."""
    pde = AbsXResidualPDE()
    sampler = RAD(pde, n_interior=4000, n_boundary=8, every=1, k=k, c=c, num_candidates=20_000,
                  replace=replace, seed=3)
    candidates = sampler.candidates(1)
    np.testing.assert_allclose(sampler.residual_magnitude(field_x, candidates), candidates[:, 0], rtol=1e-6)
    chosen = sampler.resample(field_x, 1)
    assert chosen.shape == (4000, 2)
    p = residual_density(candidates[:, 0], k, c)
    bins = np.linspace(0.0, 1.0, 6)
    expected = np.histogram(candidates[:, 0], bins, weights=p)[0]
    observed = np.histogram(chosen[:, 0], bins)[0] / len(chosen)
    # 4 standard deviations of a bin's frequency at n = 4000 is at most 0.032.
    np.testing.assert_allclose(observed, expected, atol=0.032)
    # And the continuous density it approximates, ((k + 1) x^k + c) / (1 + c) on [0, 1]:
    # far from uniform (the top bin gets 2.3 to 9 times the bottom one's share).
    low, high = bins[:-1], bins[1:]
    continuous = (high ** (k + 1) - low ** (k + 1) + c * (high - low)) / (1 + c)
    np.testing.assert_allclose(observed, continuous, atol=0.04)
    assert continuous[-1] > 2.3 * continuous[0]
    # The set holds them (interior rows), the boundary rows are the first sample's.
    points = sampler.points.numpy()
    np.testing.assert_array_equal(points[:4000], chosen)
    np.testing.assert_array_equal(points[4000:], pde.sample(4000, 8, seed=3)[4000:])


def test_draws_are_reproducible_with_a_seed():
    pde = AbsXResidualPDE()
    first, second, other = (RAD(pde, n_interior=50, n_boundary=4, every=1, num_candidates=500, seed=seed)
                            for seed in (7, 7, 8))
    np.testing.assert_array_equal(first.points.numpy(), second.points.numpy())
    a, b, c = (sampler.resample(field_x, 2) for sampler in (first, second, other))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Each round draws other points.
    assert not np.array_equal(first.resample(field_x, 3), a)
    # Without replacement, no candidate is drawn twice.
    assert len(np.unique(a, axis=0)) == 50


# -- training: the schedule, the step that sees the new points, one trace ------------------------

CHECKSUM = tf.Variable(0.0, dtype=tf.float64)
ROWS = tf.Variable(0, dtype=tf.int32)
TRACES = []


def checksum(points):
    points = np.asarray(points, "float64")
    return float(np.sum(points[:, 0] + 3.7 * points[:, 1]))


class RecordingModel(kb.PINNModel):
    """Records the batch each step trains on (a checksum and the rows) and counts its traces."""

    def train_step(self, data, per_term=None):
        TRACES.append(1)
        x = tf.cast(data, tf.float64)
        CHECKSUM.assign(tf.reduce_sum(x[:, 0] + 3.7 * x[:, 1]))
        ROWS.assign(tf.shape(x)[0])
        return super().train_step(data, per_term)


class Log(keras.callbacks.Callback):
    """After each step: what it trained on, and the sampler's set once the redraw (if due) has run."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler, self.seen, self.after, self.traces = sampler, [], [], []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append((float(CHECKSUM.numpy()), int(ROWS.numpy())))
        points = self.sampler.current_points().numpy()
        self.after.append((checksum(points), len(points)))
        self.traces.append(len(TRACES))


def train(sampler, steps_per_epoch, epochs, jit_compile=False, extra=()):
    pde = sampler.pde
    model = small_model(pde, sampler, RecordingModel)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    TRACES.clear()
    initial = sampler.current_points().numpy()
    # The sampler's callback first: the log reads the set after the step's redraw.
    log = Log(sampler)
    model.fit(sampler.dataset(), steps_per_epoch=steps_per_epoch, epochs=epochs,
              callbacks=[sampler.callback(), log, *extra], verbose=0)
    return model, log, (checksum(initial), len(initial))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_rad_redraws_every_n_steps_and_the_next_step_trains_on_them(jit_compile):
    pde = HelmholtzPDE()
    sampler = RAD(pde, n_interior=64, n_boundary=16, every=3, num_candidates=400, seed=1)
    model, log, initial = train(sampler, steps_per_epoch=5, epochs=2, jit_compile=jit_compile)
    states = [initial] + log.after
    changed = [not np.isclose(states[t][0], states[t + 1][0], rtol=0, atol=1e-3) for t in range(10)]
    # After steps 3, 6 and 9, and after no other.
    assert changed == [(t + 1) % 3 == 0 for t in range(10)]
    # Step t trained on the set as it was after step t - 1: a redraw reaches the very next step.
    for t in range(10):
        np.testing.assert_allclose(log.seen[t][0], states[t][0], rtol=1e-5)
        assert log.seen[t][1] == states[t][1] == 80
    # The step was traced in the first call (twice, as every `tf.function` that creates variables:
    # the optimizer's) and never again, for every later set.
    assert log.traces == [log.traces[0]] * 10 and log.traces[0] <= 2
    assert int(sampler.steps.numpy()) == 10 and sampler.rounds == 3


@pytest.mark.parametrize("jit_compile", [False, True])
def test_rar_d_adds_m_points_per_round_up_to_the_limit_with_one_trace(jit_compile):
    """Also under XLA, where the set's unknown number of rows reaches the second derivatives."""
    pde = HelmholtzPDE()
    sampler = RARD(pde, n_interior=40, n_boundary=16, points_per_round=7, max_interior=60, every=2,
                   num_candidates=400, seed=2)
    assert (sampler.k, sampler.c) == (2.0, 0.0)
    model, log, initial = train(sampler, steps_per_epoch=5, epochs=2, jit_compile=jit_compile)
    rows = [initial[1]] + [after[1] for after in log.after]
    # +7 after steps 2, 4, then the 6 left after step 6; nothing after that.
    assert rows == [56, 56, 63, 63, 70, 70, 76, 76, 76, 76, 76]
    assert [seen[1] for seen in log.seen] == rows[:-1]
    for t in range(10):
        np.testing.assert_allclose(log.seen[t][0], [initial, *log.after][t][0], rtol=1e-5)
    # Every size trained with the trace of the first call.
    assert log.traces == [log.traces[0]] * 10 and log.traces[0] <= 2
    # The earlier rows stay where they were; the boundary rows stay at the end.
    points = sampler.current_points().numpy()
    first = pde.sample(40, 16, seed=2)
    np.testing.assert_array_equal(points[:40], first[:40])
    np.testing.assert_array_equal(points[-16:], first[40:])
    assert int(sampler.count.numpy()) == 60


def test_rad_puts_more_points_where_the_residual_is_large():
    """After a few hundred steps on Helmholtz, RAD's points have a larger mean residual than uniform
    points, by the factor its density predicts: E_p|r| / E|r| = (E r^2 / (E|r|)^2 + 1) / 2 for
    k = c = 1, measured on the candidates of the round."""
    keras.utils.set_random_seed(0)
    pde = HelmholtzPDE()
    sampler = RAD(pde, n_interior=500, n_boundary=100, every=150, num_candidates=8000, seed=0)
    model = kb.PINNModel(pde, kb.build_pinn(pde, width=24, depth=2, seed=0), sampler=sampler)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(sampler.dataset(), steps_per_epoch=150, epochs=2, callbacks=[sampler.callback()], verbose=0)
    assert sampler.rounds == 2
    candidates = sampler.candidates(2)
    uniform = sampler.residual_magnitude(model, candidates)
    chosen = sampler.residual_magnitude(model, sampler.points.numpy()[:500])
    predicted = (np.mean(uniform**2) / np.mean(uniform) ** 2 + 1.0) / 2.0
    measured = np.mean(chosen) / np.mean(uniform)
    assert predicted > 1.2  # the residual is uneven enough for this to say something (1.28 measured)
    # Within 10 %: the mean of 500 draws varies by some 3.5 %, and drawing without replacement
    # flattens the density a little (1.26 measured).
    assert abs(measured - predicted) < 0.1 * predicted
    # The quarter of the domain where the residual is largest holds more than a quarter of the
    # points: the share p gives it, within 0.06.
    top = uniform > np.quantile(uniform, 0.75)
    share = residual_density(uniform, 1.0, 1.0)[top].sum()
    assert share > 0.35
    assert abs(np.mean(chosen > np.quantile(uniform, 0.75)) - share) < 0.06


def test_steps_per_execution_counts_every_step():
    pde = HelmholtzPDE()
    sampler = RAD(pde, n_interior=32, n_boundary=8, every=3, num_candidates=200, seed=0)
    model = small_model(pde, sampler)
    model.compile(optimizer="adam", steps_per_execution=2)
    before = sampler.points.numpy()
    model.fit(sampler.dataset(), steps_per_epoch=4, epochs=1, callbacks=[sampler.callback()], verbose=0)
    # Steps 1-2, then 3-4: the count reaches 3 in the second execution, which is followed by one redraw.
    assert int(sampler.steps.numpy()) == 4 and sampler.rounds == 1
    assert not np.array_equal(sampler.points.numpy(), before)


# -- checkpoints --------------------------------------------------------------------------------


def fresh_rad(seed):
    return RAD(HelmholtzPDE(), n_interior=64, n_boundary=16, every=4, num_candidates=400, seed=seed)


def test_backup_and_restore_continues_with_the_same_points(tmp_path):
    # Uninterrupted: 3 epochs of 4 steps.
    sampler = fresh_rad(5)
    model = small_model(sampler.pde, sampler)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(sampler.dataset(), steps_per_epoch=4, epochs=3, callbacks=[sampler.callback()], verbose=0)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    first = fresh_rad(5)
    interrupted = small_model(first.pde, first)
    interrupted.compile(optimizer=keras.optimizers.Adam(1e-3))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(first.dataset(), steps_per_epoch=4, epochs=3, callbacks=[backup, first.callback(), Stop()],
                        verbose=0)
    # A new process: a sampler with another seed, which the backup replaces; BackupAndRestore listed
    # before the sampler's callback.
    second = fresh_rad(99)
    resumed = small_model(second.pde, second)
    resumed.compile(optimizer=keras.optimizers.Adam(1e-3))
    resumed.fit(second.dataset(), steps_per_epoch=4, epochs=3, callbacks=[backup, second.callback()], verbose=0)
    assert int(second.steps.numpy()) == 12 and second.rounds == 3
    assert int(second.seed_variable.numpy()) == 5
    np.testing.assert_allclose(second.points.numpy(), sampler.points.numpy(), rtol=1e-6)
    for a, b in zip(resumed.solution.get_weights(), model.solution.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_model_save_and_load_keep_the_sampler(tmp_path):
    pde = HelmholtzPDE()
    sampler = RARD(pde, n_interior=32, n_boundary=8, points_per_round=5, max_interior=50, every=2,
                   num_candidates=300, k=1.5, c=0.5, seed=4)
    model = small_model(pde, sampler)
    model.compile(optimizer="adam")
    model.fit(sampler.dataset(), steps_per_epoch=4, epochs=1, callbacks=[sampler.callback()], verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.sampler
    assert isinstance(restored, RARD) and restored is not sampler
    assert restored.get_config() == sampler.get_config()
    assert int(restored.count.numpy()) == 42 and int(restored.steps.numpy()) == 4
    np.testing.assert_array_equal(restored.current_points().numpy(), sampler.current_points().numpy())
    # And training continues from there.
    loaded.fit(restored.dataset(), steps_per_epoch=2, epochs=1, callbacks=[restored.callback()], verbose=0)
    assert int(restored.count.numpy()) == 47


@pytest.mark.parametrize("cls", [RAD, RARD])
def test_config_round_trip(cls):
    sampler = cls(HelmholtzPDE(a2=2.0), n_interior=30, n_boundary=6, every=7, num_candidates=100, k=0.5, c=2.0,
                  sampling="sobol", replace=True, batch_size=50, seed=11)
    clone = cls.from_config(sampler.get_config())
    assert clone.get_config() == sampler.get_config()
    assert clone.pde.a2 == 2.0
    np.testing.assert_array_equal(clone.points.numpy(), sampler.points.numpy())
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sampler)).every == 7


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kwargs, name", [
    (RAD, dict(n_interior=0), "n_interior"),
    (RAD, dict(n_boundary=-1), "n_boundary"),
    (RAD, dict(every=0), "every"),
    (RAD, dict(k=-1.0), "k"),
    (RAD, dict(c=float("nan")), "c"),
    (RAD, dict(num_candidates=10, n_interior=20), "num_candidates"),
    (RAD, dict(sampling="grid"), "sampling"),
    (RAD, dict(replace="no"), "replace"),
    (RAD, dict(seed=-3), "seed"),
    (RAD, dict(batch_size=0), "batch_size"),
    (RARD, dict(points_per_round=0), "points_per_round"),
    (RARD, dict(max_interior=10, n_interior=20), "max_interior"),
    (RARD, dict(num_candidates=5, points_per_round=10), "num_candidates"),
])
def test_bad_arguments_name_the_argument(cls, kwargs, name):
    arguments = dict(n_interior=20, n_boundary=4, num_candidates=100)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=rf"Argument `{name}` must .*received {name}="):
        cls(HelmholtzPDE(), **arguments)


def test_the_model_must_hold_the_sampler():
    pde = HelmholtzPDE()
    sampler = RAD(pde, n_interior=20, n_boundary=4, num_candidates=100, seed=0)
    with pytest.raises(TypeError, match="Argument `sampler`"):
        kb.PINNModel(pde, sampler="rad")
    with pytest.raises(ValueError, match="Argument `sampler` must sample the model's problem"):
        kb.PINNModel(HelmholtzPDE(a2=2.0), sampler=sampler)
    model = small_model(pde, None)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="does not hold this sampler"):
        model.fit(sampler.dataset(), steps_per_epoch=1, callbacks=[sampler.callback()], verbose=0)


def test_docstring_examples_run():
    result = doctest.testmod(sampling, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


@pytest.mark.slow
def test_guide_example_runs():
    """The example of the guide page (docs/guide/adaptive_sampling.md) runs and prints what it says."""
    import contextlib
    import io
    import pathlib
    import re

    page = pathlib.Path(__file__).resolve().parents[2] / "docs" / "guide" / "adaptive_sampling.md"
    (code,) = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, str(page), "exec"), {})
    assert output.getvalue().strip() == "3 (640, 2)"
