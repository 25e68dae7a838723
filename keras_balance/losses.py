"""Keras `Loss` adapters: a provider of K loss terms plus a loss-level balancer.

    model.compile(optimizer="adam", loss=ReLoBRaLoLoss(pde))
    model.fit(xy, xy, batch_size=len(xy), epochs=1000)

With a PDE as the term provider, this follows the convention of Bischof's
article: `y_true` carries the collocation coordinates (x in column 0, y in
column 1) and `y_pred` carries the field and the derivatives that the PDE
declares (what `keras_balance.pinn.PINN` returns). The scalar value of term i
is the batch mean of its per-point values.

The latest weights and per-term losses can be read after any step:
`loss.term_weights` and `loss.term_losses` (NumPy arrays), or
`loss.latest()` as a dict keyed by term name.

Note: Keras calls a compiled loss in `evaluate` (and for `validation_data`)
too, and a `Loss` cannot tell training from evaluation, so such calls advance
the balancer like training steps. To validate without touching the balancer,
train a `BalancedModel` (whose `test_step` leaves the balancer alone).
"""

import keras
import tensorflow as tf

from keras_balance import balancers as balancers_lib
from keras_balance import distribute


def _pde_config(pde):
    return {"class_name": type(pde).__name__, "config": pde.get_config()}


def _pde_from_config(config):
    from keras_balance import pde as pde_lib

    for cls in pde_lib.PROBLEMS.values():
        if cls.__name__ == config["class_name"]:
            return cls(**config["config"])
    raise ValueError(f"Unknown PDE class {config['class_name']!r} in a saved loss config.")


@keras.saving.register_keras_serializable(package="keras_balance")
class BalancedLoss(keras.losses.Loss):
    """A Keras loss that combines K terms with a loss-level balancer.

    Args:
        terms: the term provider. Either a PDE (an object with `compute_loss`,
            `num_terms` and `term_names`; `y_true` then holds the coordinates),
            or a callable `terms(y_true, y_pred)` returning K tensors (each is
            averaged to a scalar).
        balancer: a loss-level balancer name, config, class or instance.
            Default `"relobralo"`.
        term_names: names of the K terms; required with a callable provider
            (unless `num_terms` is given), taken from the PDE otherwise.
        num_terms: K, when no names are given (terms are then called
            `L_0`, `L_1`, ...).
        name: name of the loss.

    Example:

    >>> def terms(y_true, y_pred):
    ...     return [(y_true - y_pred) ** 2, 1e-3 * y_pred ** 2]
    >>> loss = BalancedLoss(terms, "relobralo", term_names=["fit", "l2"])
    """

    def __init__(self, terms, balancer="relobralo", term_names=None, num_terms=None, name="balanced_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pde = terms if hasattr(terms, "compute_loss") else None
        if self.pde is None and not callable(terms):
            raise TypeError(
                "Argument `terms` must be a PDE (with `compute_loss`) or a callable "
                f"(y_true, y_pred) -> list of K terms; received terms={terms!r}."
            )
        self.terms = terms
        if term_names is None and self.pde is not None:
            term_names = self.pde.term_names
        if term_names is None:
            if num_terms is None:
                raise ValueError(
                    "BalancedLoss needs the number of terms: pass `term_names` or `num_terms` "
                    "when `terms` is a callable."
                )
            term_names = [f"L_{i}" for i in range(num_terms)]
        self.term_names = tuple(term_names)
        self.balancer = balancers_lib.get(balancer)
        if self.balancer.kind != balancers_lib.LOSS_LEVEL:
            raise ValueError(
                f"Argument `balancer` must be a loss-level balancer for a Keras loss; "
                f"received the {self.balancer.kind}-level balancer {self.balancer.name!r}. "
                "Gradient-level balancers need `BalancedModel`."
            )
        self.balancer.build_for(len(self.term_names))
        if self.balancer.trainable_weights:
            raise ValueError(
                f"The balancer {self.balancer.name!r} has trainable parameters "
                f"({', '.join(v.path for v in self.balancer.trainable_weights)}), and a Keras "
                "loss passed to `compile(loss=...)` cannot have them trained by the model's "
                "optimizer. Use `keras_balance.BalancedModel` (or `PINNModel`), which "
                "trains them with the model."
            )

    @property
    def num_terms(self):
        return len(self.term_names)

    def term_values(self, y_true, y_pred):
        """The K scalar terms of a batch as a (K,) float32 tensor."""
        if self.pde is not None:
            y_true = tf.convert_to_tensor(y_true)
            if y_true.shape.rank != 2 or (y_true.shape[-1] is not None and y_true.shape[-1] < 2):
                raise ValueError(
                    f"{self.name} expects `y_true` to hold the (x, y) coordinates, shape (N, 2); "
                    f"received shape {tuple(y_true.shape)}."
                )
            per_point = self.pde.compute_loss(y_true[:, :1], y_true[:, 1:2], y_pred)
            where = f"{type(self.pde).__name__}.compute_loss"
        else:
            per_point = self.terms(y_true, y_pred)
            where = "the `terms` callable"
        if len(per_point) != self.num_terms:
            raise ValueError(
                f"{where} returned {len(per_point)} terms; expected {self.num_terms} "
                f"(term_names={self.term_names})."
            )
        return tf.stack([tf.reduce_mean(tf.cast(t, "float32")) for t in per_point])

    def call(self, y_true, y_pred):
        # Under tf.distribute the balancer sees the global batch's terms (the
        # same weights on every replica) and each replica returns its share
        # of the objective, since the replicas' gradients are summed.
        values = distribute.globalize(self.term_values(y_true, y_pred))
        total, _ = self.balancer.combine(values)  # records the values in `balancer.term_losses`
        return distribute.scale(total)

    @property
    def term_weights(self):
        """The weights of the latest step, as a NumPy array."""
        return keras.ops.convert_to_numpy(self.balancer.term_weights)

    @property
    def term_losses(self):
        """The K unweighted losses of the latest step, as a NumPy array."""
        return keras.ops.convert_to_numpy(self.balancer.term_losses)

    def latest(self):
        """`{"L_f": ..., "w_L_f": ..., ...}` for the latest step."""
        out = {}
        for name, loss, weight in zip(self.term_names, self.term_losses, self.term_weights):
            out[name] = float(loss)
            out[f"w_{name}"] = float(weight)
        return out

    def get_config(self):
        config = super().get_config()
        if self.pde is not None:
            terms = {"pde": _pde_config(self.pde)}
        else:
            terms = keras.saving.serialize_keras_object(self.terms)
        config.update(
            {
                "terms": terms,
                "balancer": balancers_lib.serialize(self.balancer),
                "term_names": list(self.term_names),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        terms = config.pop("terms")
        if isinstance(terms, dict) and "pde" in terms:
            terms = _pde_from_config(terms["pde"])
        else:
            terms = keras.saving.deserialize_keras_object(terms)
        return cls(terms, **config)


@keras.saving.register_keras_serializable(package="keras_balance")
class ReLoBRaLoLoss(BalancedLoss):
    """ReLoBRaLo as a Keras loss: `model.compile(loss=ReLoBRaLoLoss(pde))`.

    The terms come from `pde.compute_loss(x, y, y_pred)` with the coordinates
    in `y_true`; the weights follow `keras_balance.balancers.ReLoBRaLo`
    (Bischof & Kraus, arXiv:2110.09813), whose docstring gives the formula.

    Args:
        pde: the PDE (or any object with `compute_loss`, `term_names`).
        alpha: in [0, 1], default 0.999.
        temperature: > 0, default 0.1.
        rho: in [0, 1], default 0.99 (probability of keeping the history).
        seed: optional seed of the random lookback.
        name: name of the loss.
    """

    def __init__(self, pde, alpha=0.999, temperature=0.1, rho=0.99, seed=None, name="relobralo_loss", **kwargs):
        balancer = kwargs.pop("balancer", None)
        if balancer is None:
            balancer = balancers_lib.ReLoBRaLo(
                alpha=alpha, temperature=temperature, rho=rho, seed=seed
            )
        else:
            balancer = balancers_lib.get(balancer)
        kwargs.pop("term_names", None)
        super().__init__(pde, balancer=balancer, name=name, **kwargs)

    @property
    def alpha(self):
        return self.balancer.alpha

    @property
    def temperature(self):
        return self.balancer.temperature

    @property
    def rho(self):
        return self.balancer.rho

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        terms = config.pop("terms")
        config.pop("term_names", None)
        return cls(_pde_from_config(terms["pde"]), **config)


class _MethodLoss(BalancedLoss):
    """A `BalancedLoss` whose balancer is one registered method.

    Subclasses set `method` (the registry name). Constructor keywords other
    than the `Loss` ones (`reduction`, `dtype`) go to the balancer.
    """

    method = None

    def __init__(self, terms, term_names=None, num_terms=None, name=None, reduction="sum_over_batch_size",
                 dtype=None, balancer=None, **options):
        if balancer is None:
            balancer = balancers_lib.get(self.method, **options)
        elif options:
            raise ValueError(
                f"Pass either `balancer` or the {self.method} options, not both; received {sorted(options)}."
            )
        super().__init__(terms, balancer=balancer, term_names=term_names, num_terms=num_terms,
                         name=name or f"{self.method}_loss", reduction=reduction, dtype=dtype)



def _method_loss(class_name, method, summary):
    """Define and register the Keras loss adapter of one method."""
    doc = f"""{summary}

    A `BalancedLoss` with the `{method}` balancer: `terms` is a PDE (with the
    coordinates in `y_true`) or a callable `terms(y_true, y_pred)` returning K
    tensors, as for `BalancedLoss`; the other keyword arguments are those of
    the balancer (see `keras_balance.balancers.get("{method}")`).

    Example:

    ```python
    model.compile(optimizer="adam", loss={class_name}(pde))
    ```
    """
    cls = type(class_name, (_MethodLoss,), {"method": method, "__doc__": doc, "__module__": __name__})
    return keras.saving.register_keras_serializable(package="keras_balance")(cls)


InitialLossLoss = _method_loss("InitialLossLoss", "initial_loss", "Weights 1 / L_i(0) as a Keras loss.")
PriorLossLoss = _method_loss("PriorLossLoss", "prior_loss", "Weights 1 / L_i^prior as a Keras loss.")
RealTimeLoss = _method_loss("RealTimeLoss", "real_time", "Weights 1 / stopgrad(L_i(t)) as a Keras loss.")
GeneralizedMeanLoss = _method_loss(
    "GeneralizedMeanLoss", "generalized_mean", "The generalized (power) mean of the terms as a Keras loss."
)
UncertaintyWeightingLoss = _method_loss(
    "UncertaintyWeightingLoss",
    "uncertainty",
    "Uncertainty weighting (Kendall et al. 2018). Its log-variances are trainable, which a Keras "
    "loss cannot provide: constructing it raises an error that points to `BalancedModel`.",
)
SoftAdaptLoss = _method_loss("SoftAdaptLoss", "softadapt", "SoftAdapt (Heydari et al. 2019) as a Keras loss.")
DWALoss = _method_loss(
    "DWALoss",
    "dwa",
    "Dynamic Weight Average (Liu et al. 2019) as a Keras loss. In its default per-epoch form, pass "
    "`keras_balance.callbacks.BalancerEpochEnd(loss)` to `fit`.",
)
RLWLoss = _method_loss("RLWLoss", "rlw", "Random loss weighting (Lin et al. 2021) as a Keras loss.")
