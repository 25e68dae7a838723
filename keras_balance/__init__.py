"""keras_balance: balance the terms of a multi-part loss in Keras 3."""

from keras_balance import balancers, pde, pinn
from keras_balance.losses import BalancedLoss, ReLoBRaLoLoss
from keras_balance.models import BalancedModel
from keras_balance.pde import HelmholtzPDE, KirchhoffPDE
from keras_balance.pinn import PINN, PINNModel, build_pinn
from keras_balance.saving import checkpoint_objects
from keras_balance.callbacks import BalanceHistory
from keras_balance.data import full_batch

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
    "full_batch",
    "pde",
    "pinn",
    "__version__",
]
