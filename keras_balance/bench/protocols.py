"""Published training protocols: `keras-balance train --protocol NAME` reproduces a paper's set-up.

The embedded defaults (`DEFAULTS`) are a quick run on a laptop. A protocol
sets what a paper's experiments used instead: the problem's terms, the
network, the points and their resampling, the learning-rate schedule with
its stopping rule, and the budget. Arguments given explicitly (`steps=...`,
`--steps`) still override the protocol's.

- `wang2021`: the Helmholtz problem of Wang, Teng & Perdikaris, "Understanding
  and mitigating gradient flow pathologies in physics-informed neural
  networks", SIAM J. Sci. Comput. 43(5), 2021, as their published code
  trains it: a1 = 1, a2 = 4, k = 1; the residual as the mean over 128 fresh
  interior points and the boundary term as the sum of four edge means over
  128 fresh points each, drawn anew every step; a 3 x 50 tanh network;
  Adam 1e-3 decayed by 0.9 every 1000 steps (continuously); 40,000 steps;
  LR annealing with the max numerator (`mode="max"`), as in their code.
  (Their code also standardizes the inputs by the residual points' mean and
  standard deviation; the PINN maps the square to [-1, 1] instead, a factor
  1.7 on the inputs.)
- `bischof2021`: the Kirchhoff plate of the ReLoBRaLo authors' repository
  (R. Bischof and M. Kraus, "Multi-objective loss balancing for
  physics-informed deep learning", 2021): the residual and the two
  conditions of each edge as nine terms, each the mean over its own points;
  a batch of 1024 fixed points, half interior and an eighth per edge; Adam
  1e-3 for up to 100,000 steps, with the learning rate cut by 10 when the
  sum of the (unweighted) terms has not improved for 3 evaluations of 1000
  steps (after the first tenth of the budget), the best network restored at
  each cut, and a stop after 5 cuts in a row. The network is the package's
  4 x 50 tanh (the repository's scripts sweep 1-3 layers of 32-256 units).
"""

import dataclasses

import numpy as np

import keras

#: Steps between two evaluations of the plateau rule (the repository's 1000 epochs of one batch).
PLATEAU_EVERY = 1000


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A paper's training set-up: the arguments `train` gets from it."""

    name: str
    pde: str
    summary: str
    pde_options: dict
    settings: dict
    plateau: dict = None
    #: Constructor arguments per balancer name, where the paper's code differs from the package's default.
    balancer_options: dict = dataclasses.field(default_factory=dict)

    def train_arguments(self):
        """The keyword arguments of `keras_balance.bench.train` that the protocol sets."""
        arguments = dict(self.settings)
        arguments["pde_options"] = dict(self.pde_options)
        if self.plateau is not None:
            arguments["plateau"] = dict(self.plateau)
        return arguments


PROTOCOLS = {
    "wang2021": Protocol(
        name="wang2021",
        pde="helmholtz",
        summary="Helmholtz as Wang, Teng & Perdikaris (2021) train it: 128 fresh points per set, 3 x 50, "
                "Adam 1e-3 x 0.9 per 1000 steps, 40,000 steps",
        pde_options={"a1": 1.0, "a2": 4.0, "k": 1.0, "boundary": "combined", "means": "own"},
        settings={"steps": 40000, "learning_rate": 1e-3, "lr_schedule": "exponential",
                  "decay_per_1000_steps": 0.9, "resample": True, "n_interior": 128, "n_boundary": 512,
                  "width": 50, "depth": 3, "log_every": 400},
        balancer_options={"lr_annealing": {"mode": "max"}},
    ),
    "bischof2021": Protocol(
        name="bischof2021",
        pde="kirchhoff",
        summary="the Kirchhoff plate as the ReLoBRaLo authors' repository trains it: 9 terms, 512 + 512 "
                "points, Adam 1e-3 with reduce-on-plateau, up to 100,000 steps",
        pde_options={"boundary": "per_edge", "means": "own"},
        settings={"steps": 100000, "learning_rate": 1e-3, "n_interior": 512, "n_boundary": 512,
                  "log_every": PLATEAU_EVERY},
        plateau={"patience": 3, "factor": 0.1, "max_cuts": 5, "warmup_fraction": 0.1},
    ),
}


def get(name):
    """The `Protocol` called `name`."""
    if name not in PROTOCOLS:
        raise ValueError(f"Argument `protocol` must be one of {sorted(PROTOCOLS)}; received protocol={name!r}.")
    return PROTOCOLS[name]


class PlateauSchedule(keras.callbacks.Callback):
    """Cut the learning rate on a plateau, restoring the best network; stop after several cuts in a row.

    Evaluated at the end of every epoch of `fit` (`train` makes an epoch
    `log_every` steps): the monitored value is the sum of the epoch means of
    the model's unweighted terms (comparable across balancers, unlike the
    weighted loss). An improvement saves the network's weights and resets
    the counts. Without one for `patience` evaluations, once training is
    past `warmup_steps`, the learning rate is multiplied by `factor` and the
    best weights are put back; after `max_cuts` cuts with no improvement in
    between, training stops. `restore_best()` puts the best weights back at
    the end (the network whose error a run reports).

    The rule of the ReLoBRaLo authors' repository, which evaluates the
    instantaneous loss of one step every 1000; this one takes the epoch's
    mean, which is less noisy.
    """

    def __init__(self, term_names, network, patience=3, factor=0.1, max_cuts=5, warmup_steps=0):
        super().__init__()
        self.term_names = tuple(term_names)
        self.network = network
        self.patience, self.factor, self.max_cuts = int(patience), float(factor), int(max_cuts)
        self.warmup_steps = int(warmup_steps)
        self.best, self.best_weights = np.inf, None
        self.wait = self.patience
        self.cuts = 0
        self.events = []
        self.stopped = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not all(name in logs for name in self.term_names):
            return
        value = float(sum(float(logs[name]) for name in self.term_names))
        step = int(self.model.optimizer.iterations.numpy())
        if value < self.best:
            self.best, self.wait, self.cuts = value, self.patience, 0
            self.best_weights = [w.copy() for w in self.network.get_weights()]
        if self.wait <= 0 and step >= self.warmup_steps:
            self.wait = self.patience
            self.cuts += 1
            rate = self.model.optimizer.learning_rate
            rate.assign(rate * self.factor)
            if self.best_weights is not None:
                self.network.set_weights(self.best_weights)
            self.events.append({"step": step, "learning_rate": float(rate.numpy()), "best": self.best})
            if self.cuts >= self.max_cuts:
                self.model.stop_training = self.stopped = True
        self.wait -= 1

    def restore_best(self):
        """Put the best network back (no-op before the first evaluation)."""
        if self.best_weights is not None:
            self.network.set_weights(self.best_weights)


__all__ = ["PLATEAU_EVERY", "PROTOCOLS", "PlateauSchedule", "Protocol", "get"]
