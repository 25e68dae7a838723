"""PDE problems: term names, collocation sampling, `compute_loss`, exact solutions.

`serialize(pde)` and `deserialize(config)` save and restore a problem (of any
subclass of `PDE`) inside the configs of the models and losses built on it.
"""

from keras_balance.pde.advection import AdvectionPDE
from keras_balance.pde.allen_cahn import AllenCahnPDE
from keras_balance.pde.base import PDE, SAMPLING_METHODS
from keras_balance.pde.burgers import BurgersPDE
from keras_balance.pde.helmholtz import HelmholtzPDE
from keras_balance.pde.kirchhoff import KirchhoffPDE
from keras_balance.pde.poisson import PoissonPDE
from keras_balance.pde.serialization import deserialize, serialize

PROBLEMS = {
    "helmholtz": HelmholtzPDE,
    "kirchhoff": KirchhoffPDE,
    "burgers": BurgersPDE,
    "allen_cahn": AllenCahnPDE,
    "poisson": PoissonPDE,
    "advection": AdvectionPDE,
}


def get(name, **kwargs):
    """Return a PDE instance by name (a key of `PROBLEMS`: `"helmholtz"`, `"burgers"`, ...)."""
    if isinstance(name, PDE):
        return name
    key = str(name).lower()
    if key not in PROBLEMS:
        raise ValueError(f"Unknown PDE: pde={name!r}. Known PDEs: {', '.join(sorted(PROBLEMS))}.")
    return PROBLEMS[key](**kwargs)


__all__ = [
    "PDE",
    "SAMPLING_METHODS",
    "AdvectionPDE",
    "AllenCahnPDE",
    "BurgersPDE",
    "HelmholtzPDE",
    "KirchhoffPDE",
    "PoissonPDE",
    "PROBLEMS",
    "get",
    "serialize",
    "deserialize",
]
