"""Balancers: the rules that turn K loss terms (or their gradients) into one update.

`get("relobralo")` returns a balancer by name; `available()` lists them.
"""

from keras_balance.balancers.base import (
    GRADIENT_LEVEL,
    LOSS_LEVEL,
    Balancer,
    GradientBalancer,
    LossBalancer,
)
from keras_balance.balancers.aligned_mtl import AlignedMTL
from keras_balance.balancers.cagrad import CAGrad
from keras_balance.balancers.conflict_free import ConFIG
from keras_balance.balancers.fairgrad import FairGrad
from keras_balance.balancers.gradvac import GradVac
from keras_balance.balancers.nash_mtl import NashMTL
from keras_balance.balancers.db_mtl import DBMTL
from keras_balance.balancers.excess_mtl import ExcessMTL
from keras_balance.balancers.graddrop import GradDrop
from keras_balance.balancers.fixed import Sum
from keras_balance.balancers.gradient_normalization import GradientNormalization
from keras_balance.balancers.imtl import IMTLG
from keras_balance.balancers.mgda import MGDA
from keras_balance.balancers.pcgrad import PCGrad
from keras_balance.balancers.gradnorm import GradNorm
from keras_balance.balancers.lr_annealing import LRAnnealing
from keras_balance.balancers.ntk import NTKWeighting
from keras_balance.balancers.means import GeneralizedMean
from keras_balance.balancers.registry import (
    available,
    constructor_arguments,
    deserialize,
    example,
    get,
    register,
    resolve,
    serialize,
)
from keras_balance.balancers.dwa import DWA
from keras_balance.balancers.famo import FAMO
from keras_balance.balancers.imtl_l import IMTLL
from keras_balance.balancers.stch import STCH
from keras_balance.balancers.relobralo import ReLoBRaLo
from keras_balance.balancers.prior_statistics import prior_loss
from keras_balance.balancers.rlw import RLW
from keras_balance.balancers.scaling import InitialLoss, PriorLoss, RealTime
from keras_balance.balancers.softadapt import SoftAdapt
from keras_balance.balancers.uncertainty import UncertaintyWeighting
from keras_balance.balancers.upgrad import DualProj, UPGrad

register("sum", Sum)
register("relobralo", ReLoBRaLo)
register("initial_loss", InitialLoss)
register("prior_loss", PriorLoss)
register("real_time", RealTime)
register("generalized_mean", GeneralizedMean)
register("uncertainty", UncertaintyWeighting)
register("softadapt", SoftAdapt)
register("dwa", DWA)
register("rlw", RLW)
register("famo", FAMO)
register("stch", STCH)
register("imtl_l", IMTLL)
register("lr_annealing", LRAnnealing)
register("gradnorm", GradNorm)
register("gradient_normalization", GradientNormalization)
register("pcgrad", PCGrad)
register("imtl_g", IMTLG)
register("cagrad", CAGrad)
register("nash_mtl", NashMTL)
register("fairgrad", FairGrad)
register("config", ConFIG)
register("gradvac", GradVac)
register("aligned_mtl", AlignedMTL)
register("mgda", MGDA)
register("upgrad", UPGrad)
register("dualproj", DualProj)
register("graddrop", GradDrop)
register("db_mtl", DBMTL)
register("excess_mtl", ExcessMTL)
register("ntk", NTKWeighting)

__all__ = [
    "Balancer",
    "LossBalancer",
    "GradientBalancer",
    "LOSS_LEVEL",
    "GRADIENT_LEVEL",
    "Sum",
    "ReLoBRaLo",
    "InitialLoss",
    "PriorLoss",
    "prior_loss",
    "RealTime",
    "GeneralizedMean",
    "UncertaintyWeighting",
    "SoftAdapt",
    "DWA",
    "RLW",
    "FAMO",
    "STCH",
    "IMTLL",
    "LRAnnealing",
    "GradNorm",
    "GradientNormalization",
    "PCGrad",
    "IMTLG",
    "CAGrad",
    "NashMTL",
    "FairGrad",
    "ConFIG",
    "GradVac",
    "AlignedMTL",
    "MGDA",
    "UPGrad",
    "DualProj",
    "GradDrop",
    "DBMTL",
    "ExcessMTL",
    "NTKWeighting",
    "available",
    "example",
    "constructor_arguments",
    "resolve",
    "get",
    "register",
    "serialize",
    "deserialize",
]
