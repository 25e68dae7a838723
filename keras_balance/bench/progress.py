"""The progress display of a comparison: one line per run."""

import sys
import time

import keras


class RunProgress(keras.callbacks.Callback):
    """A one-line progress display for one run of a comparison.

    Shows `[i/N] balancer seed s: step k/total (p%), elapsed, rel. L2`,
    updated at each log record: in place on a terminal, every 10 % of the
    run otherwise (log files). Reads the steps done from the optimizer.

    Args:
        label: the run's name, e.g. `"[3/12] relobralo seed 1"`.
        total_steps: the run's budget.
        stream: where to write (default `sys.stderr`).
    """

    def __init__(self, label, total_steps, stream=None):
        super().__init__()
        self.label = label
        self.total_steps = int(total_steps)
        self.stream = stream
        self.start = None
        self.last_decile = -1
        self.last_lbfgs_decile = -1

    def _stream(self):
        return self.stream or sys.stderr

    def on_train_begin(self, logs=None):
        if self.start is None:
            self.start = time.perf_counter()

    def _show(self, text, decile, last):
        """Write `text`: in place on a terminal, else once per new tenth (`last`: the attribute of the last)."""
        stream = self._stream()
        if getattr(stream, "isatty", lambda: False)():
            stream.write("\r" + text.ljust(100))
            stream.flush()
        elif decile > getattr(self, last):
            setattr(self, last, decile)
            stream.write(text + "\n")
            stream.flush()

    def lbfgs_step(self, step, total, loss):
        """Show the L-BFGS phase after Adam: `L-BFGS k/total (p%), elapsed, loss`."""
        text = (f"{self.label}: L-BFGS {step}/{total} ({100.0 * step / total:3.0f}%), "
                f"{time.perf_counter() - (self.start or time.perf_counter()):6.1f} s, loss {loss:.3e}")
        self._show(text, (10 * step) // total, "last_lbfgs_decile")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        done = int(self.model.optimizer.iterations.numpy())
        error = logs.get("rel_l2")
        text = (f"{self.label}: step {done}/{self.total_steps} ({100.0 * done / self.total_steps:3.0f}%), "
                f"{time.perf_counter() - self.start:6.1f} s"
                + ("" if error is None else f", rel. L2 {float(error):.3e}"))
        self._show(text, (10 * done) // self.total_steps, "last_decile")

    def finish(self, text):
        """End the run's line with a closing message."""
        stream = self._stream()
        if getattr(stream, "isatty", lambda: False)():
            stream.write("\r" + " " * 100 + "\r")
        stream.write(f"{self.label}: {text}\n")
        stream.flush()
