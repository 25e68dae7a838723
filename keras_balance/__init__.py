"""keras_balance: balance the terms of a multi-part loss in Keras 3."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_balance import balancers, pde, pinn  # noqa: E402
from keras_balance.losses import BalancedLoss, ReLoBRaLoLoss  # noqa: E402
from keras_balance.models import BalancedModel  # noqa: E402
from keras_balance.pde import HelmholtzPDE, KirchhoffPDE  # noqa: E402
from keras_balance.pinn import PINN, PINNModel, build_pinn  # noqa: E402
from keras_balance.saving import checkpoint_objects  # noqa: E402
from keras_balance.callbacks import BalanceHistory  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BalanceHistory",
    "BalancedLoss",
    "BalancedModel",
    "HelmholtzPDE",
    "KirchhoffPDE",
    "PINN",
    "PINNModel",
    "ReLoBRaLoLoss",
    "balancers",
    "build_pinn",
    "checkpoint_objects",
    "pde",
    "pinn",
    "__version__",
]
