"""Physics-informed networks: MLPs, nested-tape derivatives, PINN models."""

from keras_balance.pinn.derivatives import parse_derivative, partial_derivatives
from keras_balance.pinn.model import PINN, PINNModel, build_pinn
from keras_balance.pinn.networks import mlp
from keras_balance.pinn.sampling import RAD, RARD, AdaptiveSampler, residual_density
from keras_balance.pinn.weighting import RBA, CausalWeighting, PointwiseWeighting, SelfAdaptiveWeights

__all__ = [
    "PINN", "PINNModel", "RBA", "CausalWeighting", "PointwiseWeighting", "SelfAdaptiveWeights", "build_pinn", "mlp",
    "parse_derivative", "partial_derivatives",
    "RAD", "RARD", "AdaptiveSampler", "residual_density",
]
