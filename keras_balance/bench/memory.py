"""Peak memory of a training step per balancer and Jacobian mode (`keras-balance bench memory`).

Each configuration trains in a fresh Python process, so that one model's
allocations cannot hide another's: the process builds the default PINN of
the problem, compiles it with the balancer (XLA on) and trains two steps
(tracing and compiling), then resets TensorFlow's allocator statistics,
trains `steps` more steps on the default fixed points and reports the
allocator's peak (`tf.config.experimental.get_memory_info`, on the GPU when
there is one, else the CPU): the memory the training steps hold at once,
parameters, optimizer state and data included, compilation excluded. Sum is
measured the same way, and every row gives its ratio to Sum's.

On a CPU, TensorFlow's allocator reports memory in regions of some 16 MB,
so the default 1024 + 256 points measure nothing finer than that; measure
with more points (`n_interior=16384`) to see the working memory itself.
"""

import json
import subprocess
import sys

from keras_balance.bench.run import _check_positive_int

_CHILD = r"""
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, tensorflow as tf
from keras_balance import pde as pde_lib
from keras_balance.balancers.registry import resolve
from keras_balance.bench.run import DEFAULTS, problem_name
from keras_balance.data import full_batch
from keras_balance.pinn import PINNModel, build_pinn

problem_spec, name, mode, steps, n_interior = json.loads(sys.argv[1])
problem = pde_lib.deserialize(problem_spec)
settings = DEFAULTS[problem_name(problem) or "helmholtz"]
device = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
keras.utils.set_random_seed(0)
model = PINNModel(problem, build_pinn(problem, seed=0), balancer=resolve(name, problem.num_terms, seed=0))
model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]), jit_compile=True, jacobian_mode=mode)
n_interior = n_interior or settings["n_interior"]
data = full_batch(problem.sample(n_interior, n_interior // 4, seed=0))
model.fit(data, steps_per_epoch=2, verbose=0)  # build, trace and compile
tf.config.experimental.reset_memory_stats(device)
built = tf.config.experimental.get_memory_info(device)["current"]
model.fit(data, steps_per_epoch=steps, verbose=0)
print(json.dumps({"device": device, "built": built, "peak": tf.config.experimental.get_memory_info(device)["peak"]}))
"""


def peak_memory(pde="helmholtz", balancer="sum", jacobian_mode=None, steps=20, n_interior=None):
    """`{"device", "built", "peak"}` in bytes for one configuration, measured in a fresh process.

    `pde`: a name or a `PDE`; `n_interior`: interior points (a quarter as
    many on the boundary; None: the problem's default, 1024 + 256).
    """
    from keras_balance import pde as pde_lib

    problem = pde_lib.get(pde)
    if n_interior is not None:
        n_interior = _check_positive_int("n_interior", n_interior)
    spec = json.dumps([pde_lib.serialize(problem), balancer, jacobian_mode, _check_positive_int("steps", steps),
                       n_interior])
    done = subprocess.run([sys.executable, "-c", _CHILD, spec], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"The memory measurement of {balancer!r} ({jacobian_mode}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_table_rows(pde="helmholtz", balancers=("sum",), jacobian_modes=("loop",), steps=20, n_interior=None):
    """Peak memory per balancer (and per mode for gradient-level ones), with the ratio to Sum's.

    Returns:
        `[{"balancer", "jacobian_mode", "device", "peak_mb", "step_mb", "ratio"}]`:
        the peak while training, its excess over what was allocated when
        training began (`step_mb`, the steps' working memory), and `peak /
        Sum's peak`.
    """
    from keras_balance import balancers as balancers_lib

    configs = [("sum", None)]
    for name in balancers:
        if name == "sum":
            continue
        if balancers_lib.available()[name.lower()].kind == balancers_lib.GRADIENT_LEVEL:
            configs.extend((name, mode) for mode in jacobian_modes)
        else:
            configs.append((name, None))
    rows = []
    for name, mode in configs:
        result = peak_memory(pde, name, mode, steps, n_interior)
        rows.append({"balancer": name, "jacobian_mode": mode, "device": result["device"],
                     "peak_mb": result["peak"] / 2**20, "step_mb": (result["peak"] - result["built"]) / 2**20})
    base = rows[0]["peak_mb"]
    for row in rows:
        row["ratio"] = row["peak_mb"] / base
    return rows


def memory_table(rows):
    """A Markdown table of `memory_table_rows`."""
    lines = ["| balancer | per-term gradients | peak (MB) | working memory of the steps (MB) | ratio to Sum |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['balancer']} | {r['jacobian_mode'] or '-'} | {r['peak_mb']:.1f} | {r['step_mb']:.1f} | "
              f"{r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines)


__all__ = ["memory_table", "memory_table_rows", "peak_memory"]
