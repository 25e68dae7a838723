"""Callbacks that record and report balanced training."""

import logging

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


class SkippedStepsWarning(keras.callbacks.Callback):
    """Warn once per `fit` when training steps were skipped because they were not finite.

    `BalancedModel.fit` adds it. It reads the `skipped_steps` metric at the
    end of each epoch and logs a warning (logger `keras_balance`) the first
    time it is positive.
    """

    def on_train_begin(self, logs=None):
        self.warned = False

    def on_epoch_end(self, epoch, logs=None):
        skipped = (logs or {}).get("skipped_steps")
        if not self.warned and skipped is not None and float(skipped) > 0:
            self.warned = True
            logging.getLogger("keras_balance").warning(
                "keras_balance: %d training step(s) of epoch %d were skipped: a loss term or a gradient "
                "was NaN or infinite. The parameters, the optimizer and the balancer kept their state; "
                "History's `skipped_steps` counts the skipped steps of every epoch.",
                int(round(float(skipped))), epoch + 1,
            )


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


def _balancer_of(source, model):
    """The balancer to log: from `source` (balancer, loss or model) or from the model."""
    from keras_balance.balancers.base import Balancer

    for candidate in (source, model):
        if candidate is None:
            continue
        if isinstance(candidate, Balancer):
            return candidate
        balancer = getattr(candidate, "balancer", None)
        if isinstance(balancer, Balancer):
            return balancer
        balancer = getattr(getattr(candidate, "loss", None), "balancer", None)
        if isinstance(balancer, Balancer):
            return balancer
    raise ValueError(
        "BalanceHistory found no balancer: the model must be a BalancedModel or be compiled with a "
        f"keras_balance loss, or pass `source=` (a balancer, loss or model); received source={source!r} "
        f"and a model of type {type(model).__name__}."
    )


class BalanceHistory(keras.callbacks.Callback):
    """Record every loss term and its weight, per epoch or per step, to History, CSV and TensorBoard.

    The values are the balancer's own record of the latest training step
    (`balancer.term_losses` and `balancer.term_weights`): the K loss values
    it received and the K weights it used. Works with a `BalancedModel` and
    with a plain Keras model compiled with a `keras_balance` loss.

    - **History.** With `frequency="epoch"` each term `N` and its weight
      `w_N` are added to the epoch logs (when the model does not log them
      already, as a `BalancedModel` does), so `History`, `CSVLogger` and
      Keras' `TensorBoard` callback see them. Every record, at any frequency,
      is also kept in `self.history` (`{"epoch" or "step": [...], N: [...],
      "w_N": [...]}`), and per-step records are copied into the model's
      `History` under `step/N`, `step/w_N` and `step/step` when training ends.
    - **CSV.** `filename`: a header row, then one row per record:
      `epoch` (or `step`), the K terms, the K weights. Rows are flushed as
      they are written; `append=True` continues an existing file (resuming).
      `keras-balance plot FILE --out DIR` draws the figures from it.
    - **TensorBoard.** `log_dir`: a scalar `balance/N` and `balance/w_N` per
      record, at the global step (or epoch).

    Args:
        filename: optional path of the CSV file.
        frequency: `"epoch"` (default), `"step"`, or a positive int n (every
            n steps). Steps are counted by the optimizer's `iterations`, so
            they continue across resumed runs.
        log_dir: optional TensorBoard log directory.
        source: optional balancer, loss or model to read (default: the
            model's balancer or its compiled loss's balancer).
        append: append to an existing CSV instead of overwriting it.
    """

    def __init__(self, filename=None, frequency="epoch", log_dir=None, source=None, append=False):
        super().__init__()
        if frequency == "epoch":
            self.every = None
        elif frequency == "step":
            self.every = 1
        elif isinstance(frequency, (int, np.integer)) and not isinstance(frequency, bool) and frequency >= 1:
            self.every = int(frequency)
        else:
            raise ValueError(
                "Argument `frequency` must be 'epoch', 'step' or a positive integer; "
                f"received frequency={frequency!r}."
            )
        for name, value in (("filename", filename), ("log_dir", log_dir)):
            if value is not None and not isinstance(value, (str, bytes)) and not hasattr(value, "__fspath__"):
                raise TypeError(f"Argument `{name}` must be a path; received {name}={value!r}.")
        self.filename = filename
        self.frequency = frequency
        self.log_dir = log_dir
        self.source = source
        self.append = bool(append)
        self.history = {}
        self._file = None
        self._writer = None

    @property
    def index_name(self):
        return "epoch" if self.every is None else "step"

    def _names(self):
        names = getattr(self.source, "term_names", None) or getattr(self.model, "term_names", None)
        if names is None:
            names = getattr(getattr(self.model, "loss", None), "term_names", None)
        count = self.balancer.num_terms
        if names is None or len(names) != count:
            names = [f"L_{i}" for i in range(count)]
        return list(names)

    def on_train_begin(self, logs=None):
        import csv
        import os

        self.balancer = _balancer_of(self.source, self.model)
        if not self.balancer.built:
            raise ValueError(
                f"BalanceHistory: the balancer {self.balancer.name!r} does not know its number of terms yet; "
                "build it (`build_for(K)`) or pass it to a model that knows its terms."
            )
        self.names = self._names()
        self.columns = [self.index_name, *self.names, *(f"w_{n}" for n in self.names)]
        self.history = {column: [] for column in self.columns}
        if self.filename is not None:
            path = os.fspath(self.filename)
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            resume = self.append and os.path.exists(path) and os.path.getsize(path) > 0
            if resume:
                with open(path, newline="", encoding="utf-8") as handle:
                    header = next(csv.reader(handle), [])
                if header != self.columns:
                    raise ValueError(
                        f"BalanceHistory cannot append to {path!r}: its columns are {header}, "
                        f"but this run logs {self.columns}."
                    )
            self._file = open(path, "a" if resume else "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._file)
            if not resume:
                self._csv.writerow(self.columns)
                self._file.flush()
        if self.log_dir is not None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(os.fspath(self.log_dir))

    def _values(self):
        losses = np.asarray(keras.ops.convert_to_numpy(self.balancer.term_losses), dtype="float64")
        weights = np.asarray(keras.ops.convert_to_numpy(self.balancer.term_weights), dtype="float64")
        values = dict(zip(self.names, losses.tolist()))
        values.update({f"w_{n}": w for n, w in zip(self.names, weights.tolist())})
        return values

    def _record(self, index):
        values = self._values()
        row = [int(index)] + [values[column] for column in self.columns[1:]]
        for column, value in zip(self.columns, row):
            self.history[column].append(value)
        if self._file is not None:
            self._csv.writerow([row[0], *(repr(float(v)) for v in row[1:])])
            self._file.flush()
        if self._writer is not None:
            import tensorflow as tf

            with self._writer.as_default():
                for column, value in zip(self.columns[1:], row[1:]):
                    tf.summary.scalar(f"balance/{column}", value, step=int(index))
        return values

    def _iterations(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        if self.every is None:
            return
        step = self._iterations()
        if step % self.every == 0:
            self._record(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.every is None:
            values = self._record(epoch)
            if logs is not None:
                for key, value in values.items():
                    logs.setdefault(key, value)
        if self._writer is not None:
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
        history = getattr(self.model, "history", None)
        if self.every is not None and isinstance(getattr(history, "history", None), dict):
            for column, values in self.history.items():
                history.history[f"step/{column}"] = list(values)
