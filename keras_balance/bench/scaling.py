"""How the step time grows with the number of collocation points and with K (`keras-balance bench scaling`).

Two sweeps on Helmholtz with the default 4 x 50 PINN, XLA on: the number of
points at a fixed K, and K at a fixed number of points (K = 2 is one boundary
term, K = 5 one per edge, 9 and 17 two and four pieces per edge). In each
setting every balancer trains its own copy of the same network on the same
points, and the timed chunks run interleaved with Sum's, so the ratio to Sum
is measured in one process on the same load.
"""

import keras

from keras_balance import pde as pde_lib
from keras_balance.bench.run import DEFAULTS, _check_positive_int
from keras_balance.bench.timing import HELMHOLTZ_TERMS, _timing_model, interleaved_step_times
from keras_balance.data import full_batch

#: The default sweeps: interior points (a quarter as many on the boundary) and K.
POINTS = (1024, 4096, 16384, 65536)
KS = (2, 5, 9, 17)
#: Sum, one loss-level and two gradient-level balancers.
BALANCERS = ("sum", "relobralo", "mgda", "pcgrad")


def scaling(points=POINTS, ks=KS, balancers=BALANCERS, base_points=1024, base_k=5, steps=10, repeats=3, seed=0,
            jit_compile=True, verbose=0):
    """Milliseconds per step for each balancer along two sweeps.

    Args:
        points: interior point counts of the first sweep (with a quarter as
            many boundary points), at `base_k` terms.
        ks: numbers of terms of the second sweep (keys of `HELMHOLTZ_TERMS`),
            at `base_points` interior points.
        balancers: names; Sum is always timed, as the baseline.
        base_points, base_k: the fixed value of each sweep.
        steps, repeats: a timed chunk's steps, and chunks per model.
        seed: seeds the networks, the points and the order of the chunks.
        jit_compile: compile the steps with XLA.
        verbose: 1 prints each setting as it starts.

    Returns:
        Rows `{"sweep", "points", "K", "balancer", "ms_per_step", "ratio"}`
        (`points`: interior + boundary; `ratio`: to Sum in the same setting).
        The setting both sweeps share is timed once and reported in both.
    """
    steps = _check_positive_int("steps", steps)
    repeats = _check_positive_int("repeats", repeats)
    for k in list(ks) + [base_k]:
        if k not in HELMHOLTZ_TERMS:
            raise ValueError(f"Argument `ks` must take values in {sorted(HELMHOLTZ_TERMS)}; received {k!r}.")
    for n in list(points) + [base_points]:
        _check_positive_int("points", n)
    names = list(dict.fromkeys(["sum", *balancers]))
    learning_rate = DEFAULTS["helmholtz"]["learning_rate"]
    measured = {}

    def measure(n, k):
        if (n, k) not in measured:
            if verbose:
                print(f"{n} + {n // 4} points, K = {k}", flush=True)
            problem = pde_lib.HelmholtzPDE(**HELMHOLTZ_TERMS[k])
            dataset = full_batch(problem.sample(n, n // 4, seed=seed))
            models = {name: _timing_model(problem, name, dataset, seed, learning_rate, jit_compile, num_terms=k)
                      for name in names}
            measured[(n, k)] = interleaved_step_times(models, steps, repeats, baseline="sum", seed=seed)
            del models
            keras.backend.clear_session()
        return measured[(n, k)]

    rows = []
    for sweep, settings in (("points", [(n, base_k) for n in points]), ("K", [(base_points, k) for k in ks])):
        for n, k in settings:
            times = measure(n, k)
            rows.extend({"sweep": sweep, "points": n + n // 4, "K": k, "balancer": name, **times[name]}
                        for name in names)
    return rows


def scaling_table(rows, sweep):
    """A Markdown table of one sweep of `scaling`: a row per setting, a column per balancer (ms, ratio to Sum)."""
    rows = [r for r in rows if r["sweep"] == sweep]
    names = list(dict.fromkeys(r["balancer"] for r in rows))
    settings = list(dict.fromkeys((r["points"], r["K"]) for r in rows))
    lines = ["| points | K | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for n, k in settings:
        cells = {r["balancer"]: r for r in rows if (r["points"], r["K"]) == (n, k)}
        lines.append(f"| {n} | {k} | " + " | ".join(
            f"{cells[name]['ms_per_step']:.1f} ms ({cells[name]['ratio']:.2f})" for name in names) + " |")
    return "\n".join(lines)


__all__ = ["BALANCERS", "KS", "POINTS", "scaling", "scaling_table"]
