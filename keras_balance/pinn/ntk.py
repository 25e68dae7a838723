"""The traces of the neural tangent kernel of each term of a PINN.

For a term whose per-point values are `e_j = r_j^2` (the squared residual of a
PDE, or of a boundary condition, at point j), the neural tangent kernel (NTK)
of S. Wang, X. Yu and P. Perdikaris, "When and why PINNs fail to train: a
neural tangent kernel perspective", J. Comput. Phys. 449, 110768, 2022
(the kernel of a PINN's residual and boundary terms they derive), has the diagonal

    K_jj = ||d r_j / d theta||^2,

and its trace is the sum of the diagonal over the term's points. The weights
of their Algorithm 1 are ratios of such traces (`keras_balance.balancers.NTKWeighting`).

`term_traces` computes them from per-point gradients: `s_j = |r_j| =
sqrt(e_j)` has the gradient `sign(r_j) d r_j / d theta`, so its squared norm is
the diagonal entry (the sign is lost, the norm is not). The square root is
guarded (double `tf.where`): where `e_j = 0` its gradient is 0, not NaN.
"""

import tensorflow as tf

from keras_balance.balancers.seeds import counter_uniform

#: How the diagonal of a term's kernel becomes one number (see `term_traces`).
MEANS = ("batch", "own")


def check_means(means):
    if means not in MEANS:
        raise ValueError(f"Argument `means` must be one of {MEANS}; received means={means!r}.")
    return means


def check_points(points):
    if points is not None and (isinstance(points, bool) or not isinstance(points, int) or points < 1):
        raise ValueError(f"Argument `points` must be None or a positive integer; received points={points!r}.")
    return points


def safe_sqrt(values):
    """`sqrt(values)` for values >= 0, with gradient 0 (not NaN or infinity) where `values == 0`."""
    positive = values > 0.0
    return tf.where(positive, tf.sqrt(tf.where(positive, values, tf.ones_like(values))), tf.zeros_like(values))


def subset_rows(x, points, seed, step):
    """`points` distinct rows of `x`, drawn without replacement, a pure function of `(seed, step)`.

    All of `x` when `points` is None or at least its number of rows. The
    draw is counter-based (`keras_balance.balancers.seeds.counter_uniform`),
    so eager execution, `tf.function` and XLA pick the same rows.
    """
    rows = x.shape[0]
    if points is None or (rows is not None and points >= rows):
        return x
    if rows is None:
        rows = tf.shape(x)[0]
    noise = counter_uniform(seed, step, rows, tf.float32)
    _, chosen = tf.math.top_k(noise, k=points)
    return tf.gather(x, tf.sort(chosen))


def ntk_diagonal(point_terms, x, variables):
    """The NTK diagonal of every term at every point: an (N, K) tensor, and the terms' values.

    Entry (j, k) is `||d s_jk / d theta||^2` with `s_jk = sqrt(e_jk)`, where
    `point_terms(x)` returns the K per-point terms `e_k` (each (N, 1)) and
    theta are `variables`. The gradients are taken one row at a time,
    vectorized over the rows (`tf.vectorized_map`: a forward and K backward
    passes on one point, batched), so the cost grows as N; a `tape.jacobian`
    of the (N, K) values runs N K backward passes through the whole batch
    and grows as N^2 (on CPU, 14 times slower at N = 128, and out of memory
    at N = 1280 for Helmholtz's default network).

    A term whose value at a point depends on the other rows only through a
    factor that the parameters do not change (a PDE built with
    `means="own"` scales each point by N / n_k, `own_mean`) gets that factor
    from the batch: its diagonal is the one-row diagonal times
    `e_jk(batch) / e_jk(row)`.

    Returns:
        `(diagonal, values)`: two (N, K) tensors, the diagonal and the
        per-point terms of the batch.
    """
    x = tf.convert_to_tensor(x)
    values = tf.concat([tf.reshape(term, [-1, 1]) for term in point_terms(x)], axis=1)
    num_terms = int(values.shape[1])

    def one_row(row):
        with tf.GradientTape(persistent=True) as tape:
            alone = tf.concat([tf.reshape(term, [1, 1]) for term in point_terms(row[None, :])], axis=1)[0]
            roots = safe_sqrt(alone)
            parts = [roots[k] for k in range(num_terms)]
        norms = []
        for part in parts:
            grads = tape.gradient(part, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            norms.append(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, alone.dtype))) for g in grads]))
        del tape
        return tf.stack(norms), alone

    diagonal, alone = tf.vectorized_map(one_row, x)
    diagonal = tf.cast(diagonal, values.dtype)
    alone = tf.cast(alone, values.dtype)
    positive = alone > 0.0
    factor = tf.where(positive, values / tf.where(positive, alone, tf.ones_like(alone)), tf.zeros_like(alone))
    return diagonal * factor, values


def term_traces(point_terms, x, variables, means="batch", points=None, seed=0, step=0):
    """The K traces of the terms' NTK blocks, as means of the diagonal: a (K,) tensor.

    Args:
        point_terms: a callable mapping an (N, 2) batch to the K per-point
            terms, each (N, 1) and >= 0 (squared residuals; a PINNModel's
            `point_terms(x)[1]`).
        x: the (N, 2) batch.
        variables: the parameters theta of the kernel.
        means: how the diagonal becomes one number per term.
            `"batch"` (default): its sum over the term's points divided by
            the number of rows N: the trace of Algorithm 1 up to the factor
            1/N every term shares, which the ratios of the weights cancel.
            `"own"`: its mean over the term's own points, the rows where the
            term is not zero (a boundary term is zero off its edges), as
            jaxpi does (each term evaluated on its own points): with n_k
            such rows, the batch value times N / n_k. A term whose value is
            exactly zero at one of its points (a residual solved to the last
            bit) does not count it; a term with no such row gets 0.
        points: None (every row) or the number of rows, drawn at random
            without replacement, on which the kernel is evaluated (jaxpi
            evaluates it on one batch); the draw is a function of `seed`
            and `step` (int64 scalars).

    A PDE built with `means="own"` already scales each per-point term by N /
    n_k (see `keras_balance.pde.base.own_mean`): its `s_j` then carry a factor
    sqrt(N / n_k), its diagonal a factor N / n_k: the kernel of the term as it
    enters the loss.
    """
    check_means(means)
    check_points(points)
    x = subset_rows(tf.convert_to_tensor(x), points, seed, step)
    diagonal, values = ntk_diagonal(point_terms, x, variables)
    total = tf.reduce_sum(diagonal, axis=0)
    if means == "batch":
        return total / tf.cast(tf.shape(diagonal)[0], total.dtype)
    own = tf.reduce_sum(tf.cast(values > 0.0, total.dtype), axis=0)
    return tf.math.divide_no_nan(total, own)


__all__ = ["MEANS", "ntk_diagonal", "safe_sqrt", "subset_rows", "term_traces"]
