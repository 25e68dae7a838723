"""Callbacks that record and report balanced training."""

import keras
import numpy as np


class TrainingProgress(keras.callbacks.Callback):
    """One progress bar over all training steps, updated at each epoch end.

    Useful when training is split into many short epochs (to log every n
    steps): Keras' own bar would print one line per epoch.

    Args:
        total_steps: the number of training steps of the whole run.
        steps_per_epoch: steps in each epoch.
        keys: the logged values to show (default: all).
    """

    def __init__(self, total_steps, steps_per_epoch, keys=None):
        super().__init__()
        self.total_steps = int(total_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.keys = keys
        self.done = 0
        self.bar = keras.utils.Progbar(self.total_steps, stateful_metrics=keys, unit_name="step")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        keys = self.keys or sorted(logs)
        values = [(k, float(np.asarray(logs[k]))) for k in keys if k in logs]
        self.done = min(self.done + self.steps_per_epoch, self.total_steps)
        self.bar.update(self.done, values=values)


class ExactErrorHistory(keras.callbacks.Callback):
    """Record the error against an exact solution at the end of each epoch.

    Adds `rel_l2` and `mse` (see `PDE.error`) to the epoch logs, so they
    appear in `History`.

    Args:
        pde: a `keras_balance.pde.PDE` with an exact solution.
        predict: a callable mapping (M, 2) points to the predicted field.
        grid: grid points per side.
    """

    def __init__(self, pde, predict, grid=51):
        super().__init__()
        self.pde = pde
        self.predict = predict
        self.grid = int(grid)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.pde.error(self.predict, n=self.grid))


class BalancerEpochEnd(keras.callbacks.Callback):
    """Call a per-epoch balancer's `end_epoch()` after every training epoch.

    `BalancedModel.fit` adds it by itself. With a Keras loss adapter
    (`model.compile(loss=DWALoss(...))`), pass it to `fit`:
    `model.fit(..., callbacks=[BalancerEpochEnd(loss)])`.

    Args:
        target: a balancer, or an object with a `balancer` attribute (a loss
            adapter, a `BalancedModel`).
    """

    def __init__(self, target):
        super().__init__()
        self.target = target

    def on_epoch_end(self, epoch, logs=None):
        balancer = getattr(self.target, "balancer", self.target)
        balancer.end_epoch()
