"""A PINN training step written by hand, without `BalancedModel`: the baseline of the framework's cost.

What a user would write without keras_balance: one `tf.function` that takes
the derivatives of the network with nested `GradientTape`s spelled out for
the problem at hand, sums the PDE's terms (the mean of each) and applies
Adam. It uses none of `PINN`, `PINNModel`, `BalancedModel` or the balancers,
only the network (a plain Keras MLP) and `PDE.residuals`, which defines
the terms. `keras-balance speed` and `keras-balance bench paths` time the
framework's training paths against it, in the same process.
"""

import math
import time

import keras
import tensorflow as tf

from keras_balance import pde as pde_lib


def helmholtz_columns(field, x, y):
    """`(u, u_xx, u_yy)` of `field(x, y)`, with two nested tapes."""
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([x, y])
        with tf.GradientTape(persistent=True) as inner:
            inner.watch([x, y])
            u = field(x, y)
        u_x, u_y = inner.gradient(u, x), inner.gradient(u, y)
    return [u, outer.gradient(u_x, x), outer.gradient(u_y, y)]


def kirchhoff_columns(field, x, y):
    """`(w, w_xx, w_yy, w_xxxx, w_xxyy, w_yyyy)` of `field(x, y)`, with four nested tapes."""
    with tf.GradientTape(persistent=True) as fourth:
        fourth.watch([x, y])
        with tf.GradientTape(persistent=True) as third:
            third.watch([x, y])
            with tf.GradientTape(persistent=True) as second:
                second.watch([x, y])
                with tf.GradientTape(persistent=True) as first:
                    first.watch([x, y])
                    w = field(x, y)
                w_x, w_y = first.gradient(w, x), first.gradient(w, y)
            w_xx, w_yy = second.gradient(w_x, x), second.gradient(w_y, y)
        w_xxx, w_xxy, w_yyy = third.gradient(w_xx, x), third.gradient(w_xx, y), third.gradient(w_yy, y)
    return [w, w_xx, w_yy, fourth.gradient(w_xxx, x), fourth.gradient(w_xxy, y), fourth.gradient(w_yyy, y)]


def burgers_columns(field, x, t):
    """`(u, u_t, u_x, u_xx)` of `field(x, t)`, with two nested tapes."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape(persistent=True) as inner:
            inner.watch([x, t])
            u = field(x, t)
        u_x = inner.gradient(u, x)
    return [u, inner.gradient(u, t), u_x, outer.gradient(u_x, x)]


def allen_cahn_columns(field, x, t):
    """`(u, u_t, u_xx)` of `field(x, t)`, with two nested tapes."""
    u, u_t, _, u_xx = burgers_columns(field, x, t)
    return [u, u_t, u_xx]


def advection_columns(field, x, t):
    """`(u, u_t, u_x)` of `field(x, t)`, with one tape."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, t])
        u = field(x, t)
    return [u, tape.gradient(u, t), tape.gradient(u, x)]


#: The hand-written derivatives of each problem, in the order of its `derivatives`.
COLUMNS = {"helmholtz": helmholtz_columns, "kirchhoff": kirchhoff_columns, "burgers": burgers_columns,
           "allen_cahn": allen_cahn_columns, "poisson": helmholtz_columns, "advection": advection_columns}


class HandWrittenStep:
    """One full-batch training step of `network` on `problem`, written by hand.

    The network sees the coordinates mapped to [-1, 1] on the problem's
    domain (a periodic coordinate as its cosine and sine, see the problem's
    `periods`) and its output is multiplied by `output_scale`, as
    `build_pinn` sets a PINN up; the loss is the plain sum of the term means (what Sum
    gives), and the optimizer is Adam.

    Args:
        problem: one of the problems of `COLUMNS` (any boundary option).
        network: a Keras model mapping (N, 2) scaled coordinates to (N, 1)
            (N, 3 with a periodic coordinate).
        learning_rate: Adam's learning rate.
        output_scale: the factor on the network's output (None: the
            problem's `characteristic_scale`, as `build_pinn` does).
        jit_compile: compile the step with XLA.
        per_term: take each term's gradient with its own backward pass and
            add them up (what a gradient-level balancer's loop mode must do
            at the least: one forward pass, K backward passes), rather than
            one backward pass of the sum.

    Example:

    >>> problem = pde_lib.HelmholtzPDE()
    >>> step = HandWrittenStep(problem, mlp(seed=0), 1e-3)
    >>> seconds = step.run(problem.sample(seed=0), steps=10)
    """

    def __init__(self, problem, network, learning_rate=1e-3, output_scale=None, jit_compile=True, per_term=False):
        name = next((key for key, cls in pde_lib.PROBLEMS.items() if type(problem) is cls), None)
        if name not in COLUMNS:
            raise ValueError(
                f"Argument `problem` must be one of the problems with a hand-written step, {sorted(COLUMNS)}; "
                f"received {type(problem).__name__}."
            )
        self.problem = problem
        self.network = network
        self.columns = COLUMNS[name]
        self.output_scale = float(getattr(problem, "characteristic_scale", 1.0) if output_scale is None
                                  else output_scale)
        (x0, x1), (y0, y1) = problem.domain
        self.center = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
        self.half = ((x1 - x0) / 2.0, (y1 - y0) / 2.0)
        self.periods = tuple(getattr(problem, "periods", (None, None)))
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.optimizer.build(network.trainable_variables)
        self.per_term = bool(per_term)
        self.step = tf.function(self._step, jit_compile=jit_compile)

    def field(self, x, y):
        features = []
        for i, value in enumerate((x, y)):
            if self.periods[i] is None:
                features.append((value - self.center[i]) / self.half[i])
            else:
                angle = (2.0 * math.pi / self.periods[i]) * (value - (self.center[i] - self.half[i]))
                features += [tf.cos(angle), tf.sin(angle)]
        return self.output_scale * self.network(tf.concat(features, axis=1))

    def _step(self, points):
        x, y = points[:, :1], points[:, 1:2]
        variables = self.network.trainable_variables
        with tf.GradientTape(persistent=self.per_term) as tape:
            columns = self.columns(self.field, x, y)
            # The terms from the separate columns: a boundary term's gradient
            # then skips the derivatives' graph.
            fields = dict(zip(self.problem.derivatives, columns))
            terms = [tf.reduce_mean(term) for term in self.problem.residuals(x, y, fields)]
            loss = tf.add_n(terms)
        if self.per_term:
            per_term = [tape.gradient(term, variables) for term in terms]
            grads = [tf.add_n([g[v] for g in per_term if g[v] is not None]) for v in range(len(variables))]
        else:
            grads = tape.gradient(loss, variables)
        del tape
        self.optimizer.apply(grads, variables)
        return loss

    def run(self, points, steps):
        """Train `steps` steps on `points` (an (N, 2) array or tensor); return the wall time in seconds."""
        points = tf.convert_to_tensor(points, dtype=self.network.variable_dtype)
        start = time.perf_counter()
        loss = None
        for _ in range(steps):
            loss = self.step(points)
        float(loss)  # wait for the device
        return time.perf_counter() - start


__all__ = ["COLUMNS", "HandWrittenStep", "advection_columns", "allen_cahn_columns", "burgers_columns",
           "helmholtz_columns", "kirchhoff_columns"]
