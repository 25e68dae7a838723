"""The harness behind `keras-balance train`, `compare`, `speed` and `bench overhead`.

`train(...)` trains a PINN on one PDE with one balancer and returns a
`RunResult` (per-term losses and weights over steps, the error against the
exact solution, wall time). `run_comparison(...)` runs several balancers and
seeds on the same budget and `comparison_table` formats its report.
`step_times`, `overhead` and `training_paths` measure the cost of a training
step with one interleaved timer (`interleaved_step_times`), against Sum and
against a step written by hand without keras_balance (`HandWrittenStep`).
`multitask_comparison(...)` runs balancers on MultiDigits, a multi-task
benchmark built from scikit-learn's bundled digits (`keras_balance.bench.multitask`),
and scores them with Delta_m% (`delta_m`).

Example:

```python
from keras_balance import bench

result = bench.train("helmholtz", "relobralo", steps=1000, verbose=0)
comparison = bench.run_comparison("helmholtz", ["relobralo", "softadapt"], seeds=[0, 1])
print(bench.comparison_table(comparison))
```
"""

from keras_balance.bench.comparison import balancer_names, options_for, run_comparison
from keras_balance.bench.progress import RunProgress
from keras_balance.bench.report import comparison_table, overhead_table, save_figures, write_comparison
from keras_balance.bench.run import (
    DEFAULTS,
    LR_SCHEDULES,
    ExponentialToFinal,
    RunResult,
    learning_rate_schedule,
    point_dataset,
    problem_name,
    train,
)
from keras_balance.bench.handwritten import HandWrittenStep
from keras_balance.bench.memory import memory_table, memory_table_rows, peak_memory
from keras_balance.bench.multitask import (
    MultiDigits, delta_m, multi_digits, multitask_comparison, multitask_table, train_multitask,
)
from keras_balance.bench.paths import PATHS, paths_table, training_paths
from keras_balance.bench.scaling import scaling, scaling_table
from keras_balance.bench.timing import (
    HAND_WRITTEN, HAND_WRITTEN_PER_TERM, HELMHOLTZ_TERMS, interleaved_step_times, overhead, step_times,
)

__all__ = [
    "DEFAULTS",
    "LR_SCHEDULES",
    "HELMHOLTZ_TERMS",
    "HAND_WRITTEN",
    "HAND_WRITTEN_PER_TERM",
    "HandWrittenStep",
    "PATHS",
    "paths_table",
    "memory_table",
    "memory_table_rows",
    "peak_memory",
    "scaling",
    "scaling_table",
    "training_paths",
    "ExponentialToFinal",
    "RunResult",
    "RunProgress",
    "train",
    "point_dataset",
    "problem_name",
    "learning_rate_schedule",
    "save_figures",
    "interleaved_step_times",
    "step_times",
    "overhead",
    "overhead_table",
    "run_comparison",
    "comparison_table",
    "write_comparison",
    "balancer_names",
    "options_for",
    "MultiDigits",
    "multi_digits",
    "delta_m",
    "train_multitask",
    "multitask_comparison",
    "multitask_table",
]
