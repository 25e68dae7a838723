"""Keras `Loss` adapters: a provider of K loss terms plus a loss-level balancer.

    model.compile(optimizer="adam", loss=ReLoBRaLoLoss(pde))
    model.fit(keras_balance.full_batch(xy, xy), steps_per_epoch=1000)

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

import weakref

import keras
import tensorflow as tf

from keras_balance import balancers as balancers_lib
from keras_balance import compat
from keras_balance import distribute
from keras_balance import pde as pde_lib
from keras_balance.pde.base import check_same_rows


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
        if getattr(self.balancer, "uses_traces", False):
            raise ValueError(
                f"The balancer {self.balancer.name!r} ({type(self.balancer).__name__}) weighs the terms by the "
                "traces of their neural tangent kernels, which a Keras loss cannot compute (it sees the loss "
                "values only). Use `keras_balance.pinn.PINNModel`, which computes them."
            )
        # One owner per balancer on every route: a second loss (or a model)
        # would advance this state with its own losses.
        self.balancer.claim(self)
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
            check_same_rows(self.name, y_true=y_true, y_pred=y_pred)
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

    _model = None

    def _claim_model(self):
        """Record the model this loss trains; a second live model is an error naming both."""
        model = compat.calling_model()
        if model is None:
            return
        first = self._model() if self._model is not None else None
        if first is not None and first is not model:
            raise ValueError(
                f"The loss {self.name!r} (balancer {self.balancer.name!r}) already trains the model "
                f"{first.name!r}, and the model {model.name!r} called it too: a balanced loss holds "
                "the state of one training run. Compile each model with its own loss, e.g. "
                "`type(loss).from_config(loss.get_config())`."
            )
        self._model = weakref.ref(model)

    def call(self, y_true, y_pred):
        self._claim_model()
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
            terms = {"pde": pde_lib.serialize(self.pde)}
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
            terms = pde_lib.deserialize(terms["pde"])
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
        return cls(pde_lib.deserialize(terms["pde"]), **config)


class MethodLoss(BalancedLoss):
    """A `BalancedLoss` whose balancer is one registered loss-level method.

    The base of the adapters below. A subclass sets `method`, the registry
    name of its balancer, and a docstring; the constructor is this one, whose
    keywords other than those of `BalancedLoss` and `keras.losses.Loss` are
    the options of the balancer.

    Args:
        terms: a PDE (the coordinates then travel in `y_true`) or a callable
            `terms(y_true, y_pred)` returning K tensors, as for `BalancedLoss`.
        term_names, num_terms: see `BalancedLoss`.
        name: name of the loss. Default `"<method>_loss"`.
        reduction, dtype: see `keras.losses.Loss`.
        balancer: optional balancer (instance, name or config) to use instead
            of a new one; loading a saved loss passes its balancer this way.
            Not together with options.
        **options: constructor arguments of the balancer,
            `keras_balance.balancers.get(method, **options)`.

    Example:

    >>> @keras.saving.register_keras_serializable(package="my_project")
    ... class MyMethodLoss(MethodLoss):
    ...     method = "my_method"   # registered with keras_balance.balancers.register
    """

    #: The registry name of the balancer (`keras_balance.balancers.get`).
    method = None

    def __init__(self, terms, term_names=None, num_terms=None, name=None, reduction="sum_over_batch_size",
                 dtype=None, balancer=None, **options):
        if self.method is None:
            raise TypeError(
                f"{type(self).__name__} must set `method`, the registry name of its balancer; "
                "`MethodLoss` is the base class of the per-method losses."
            )
        if balancer is None:
            balancer = balancers_lib.get(self.method, **options)
        elif options:
            raise ValueError(
                f"Pass either `balancer` or the {self.method} options, not both; received {sorted(options)}."
            )
        super().__init__(terms, balancer=balancer, term_names=term_names, num_terms=num_terms,
                         name=name or f"{self.method}_loss", reduction=reduction, dtype=dtype)


@keras.saving.register_keras_serializable(package="keras_balance")
class InitialLossLoss(MethodLoss):
    """Initial-loss weighting as a Keras loss: each term divided by its first value.

    A `MethodLoss` with the `"initial_loss"` balancer
    (`keras_balance.balancers.InitialLoss`), `lambda_i = 1 / (L_i(0) + eps)`:
    every weighted term starts at 1, whatever its units.

    Args:
        n_initial: int >= 1, default 1. Number of first steps whose mean
            estimates L(0).
        epsilon: >= 0, default 1e-12. Guard added to the denominator.

    Example:

    >>> loss = InitialLossLoss(HelmholtzPDE(), n_initial=5)
    >>> loss.balancer.n_initial, loss.term_names
    (5, ('L_f', 'L_b'))
    """

    method = "initial_loss"


@keras.saving.register_keras_serializable(package="keras_balance")
class PriorLossLoss(MethodLoss):
    """Prior-loss weighting as a Keras loss: each term divided by a label-only model's loss.

    A `MethodLoss` with the `"prior_loss"` balancer
    (`keras_balance.balancers.PriorLoss`), `lambda_i = 1 / (L_i^prior + eps)`,
    with constant weights. `keras_balance.balancers.prior_loss` computes a
    term's prior loss from its labels.

    Args:
        prior_losses: K finite, positive numbers (required).
        epsilon: >= 0, default 1e-12. Guard added to the denominator.

    Example:

    >>> classes = prior_loss([0, 0, 1, 1], "cross_entropy")      # log 2
    >>> loss = PriorLossLoss(terms, term_names=["label", "value"], prior_losses=[classes, 4.0])
    >>> [round(w, 4) for w in loss.term_weights.tolist()]
    [1.4427, 0.25]
    """

    method = "prior_loss"


@keras.saving.register_keras_serializable(package="keras_balance")
class RealTimeLoss(MethodLoss):
    """Real-time weighting as a Keras loss: each term divided by its current value.

    A `MethodLoss` with the `"real_time"` balancer
    (`keras_balance.balancers.RealTime`), `lambda_i = 1 / (stopgrad(L_i) + eps)`:
    the gradient of the total is that of `sum_i log L_i`.

    Args:
        epsilon: >= 0, default 1e-12. Guard added to the denominator.

    Example:

    >>> pde = KirchhoffPDE()
    >>> model = build_pinn(pde, width=20, depth=3)
    >>> model.compile(optimizer="adam", loss=RealTimeLoss(pde))
    """

    method = "real_time"


@keras.saving.register_keras_serializable(package="keras_balance")
class GeneralizedMeanLoss(MethodLoss):
    """The generalized (power) mean of the terms as a Keras loss.

    A `MethodLoss` with the `"generalized_mean"` balancer
    (`keras_balance.balancers.GeneralizedMean`): the total is
    `((1/K) sum_i L_i^gamma)^(1/gamma)`, whose gradient carries the weights
    (1: the arithmetic mean, 0: the geometric mean, inf: the largest term).

    Args:
        gamma: a real number or +/-inf, default 0.
        epsilon: > 0, default 1e-12. Floor of every term for finite `gamma`.

    Example:

    >>> loss = GeneralizedMeanLoss(HelmholtzPDE(), gamma=float("inf"))  # the worst term
    """

    method = "generalized_mean"


@keras.saving.register_keras_serializable(package="keras_balance")
class UncertaintyWeightingLoss(MethodLoss):
    """Uncertainty weighting (Kendall et al. 2018); as a Keras loss, an error.

    The `"uncertainty"` balancer (`keras_balance.balancers.UncertaintyWeighting`)
    learns one log-variance per term, which the model's optimizer must train;
    a loss passed to `compile(loss=...)` cannot provide that, so constructing
    this class raises an error that points to `BalancedModel` (or
    `PINNModel`), which trains them with the model.

    Args:
        regularizer: `"kendall"` (default) or `"log1p"`.
        epsilon: > 0, default 1e-12. Floor of the variances.

    Example:

    >>> model = PINNModel(HelmholtzPDE(), balancer="uncertainty")  # instead
    """

    method = "uncertainty"


@keras.saving.register_keras_serializable(package="keras_balance")
class SoftAdaptLoss(MethodLoss):
    """SoftAdapt (Heydari et al. 2019) as a Keras loss.

    A `MethodLoss` with the `"softadapt"` balancer
    (`keras_balance.balancers.SoftAdapt`): a softmax of each term's recent
    rate of change, so the terms that fall slowest get the most weight.

    Args:
        beta: finite, default 0.1. Softmax sharpness on the rates.
        variant: `"original"` (default), `"normalized"` or `"loss_weighted"`.
        window: int >= 2, default 2. Loss values the rate is taken over.
        sum_to_k: bool, default True. Weights sum to K (else to 1).
        epsilon: >= 0, default 1e-12.

    Example:

    >>> loss = SoftAdaptLoss(HelmholtzPDE(boundary="per_edge"), beta=0.5, variant="loss_weighted")
    >>> loss.num_terms
    5
    """

    method = "softadapt"


@keras.saving.register_keras_serializable(package="keras_balance")
class DWALoss(MethodLoss):
    """Dynamic Weight Average (Liu et al. 2019) as a Keras loss.

    A `MethodLoss` with the `"dwa"` balancer (`keras_balance.balancers.DWA`):
    a softmax of each term's ratio of its last two values (per epoch by
    default, per step with `per="step"`). In the per-epoch form, pass
    `keras_balance.callbacks.BalancerEpochEnd(loss)` to `fit`, which
    updates the weights after every epoch.

    Args:
        temperature: > 0, default 2.0. Softmax temperature.
        per: `"epoch"` (default) or `"step"`.
        epsilon: >= 0, default 1e-12.

    Example:

    >>> loss = DWALoss(pde)
    >>> model.compile(optimizer="adam", loss=loss)
    >>> history = model.fit(xy, xy, batch_size=256, epochs=50, callbacks=[BalancerEpochEnd(loss)])
    """

    method = "dwa"


@keras.saving.register_keras_serializable(package="keras_balance")
class RLWLoss(MethodLoss):
    """Random loss weighting (Lin et al. 2022) as a Keras loss.

    A `MethodLoss` with the `"rlw"` balancer (`keras_balance.balancers.RLW`):
    fresh weights `K softmax(z)`, `z ~ N(0, I)`, at every step, the baseline
    an adaptive method should beat.

    Args:
        seed: optional int. Equal seeds give equal weight sequences.

    Example:

    >>> baseline = RLWLoss(HelmholtzPDE(), seed=0)
    """

    method = "rlw"


@keras.saving.register_keras_serializable(package="keras_balance")
class FAMOLoss(MethodLoss):
    """FAMO (Liu et al. 2023) as a Keras loss.

    A `MethodLoss` with the `"famo"` balancer (`keras_balance.balancers.FAMO`):
    weights `c softmax(xi)_i / L_i` (summing to 1), with logits `xi` that the
    balancer updates itself, by an Adam step from the fall of each log loss
    between consecutive steps; nothing for the model's optimizer to train.

    Args:
        min_losses: optional K non-negative lower bounds of the losses.
        learning_rate: >= 0, default 0.025. Adam's learning rate of the logits.
        weight_decay: >= 0, default 1e-3. Regularization of the logits.
        epsilon: > 0, default 1e-8.

    Example:

    >>> loss = FAMOLoss(HelmholtzPDE(), learning_rate=0.05)
    >>> model.compile(optimizer="adam", loss=loss)
    """

    method = "famo"


@keras.saving.register_keras_serializable(package="keras_balance")
class STCHLoss(MethodLoss):
    """Smooth Tchebycheff scalarization (Lin et al. 2024) as a Keras loss.

    A `MethodLoss` with the `"stch"` balancer (`keras_balance.balancers.STCH`):
    weights from the gradient of `mu log sum_i exp(lambda_i y_i / mu)`, which
    favour the worst terms. With `normalization="log_nadir"` and a warm-up,
    pass `keras_balance.callbacks.BalancerEpochEnd(loss)` to `fit`, which
    closes the warm-up epochs.

    Args:
        mu: > 0, default 1.0. Smoothing.
        preference: optional K non-negative numbers (default 1/K each).
        ideal_point: optional K numbers subtracted from the losses.
        normalization: `"none"` (default) or `"log_nadir"`.
        nadir_point: optional K positive numbers (with "log_nadir").
        warmup_epochs: int >= 0, default 0. Epochs that measure the nadir point.
        epsilon: > 0, default 1e-20.

    Example:

    >>> loss = STCHLoss(HelmholtzPDE(), mu=0.1)
    >>> model.compile(optimizer="adam", loss=loss)
    """

    method = "stch"


@keras.saving.register_keras_serializable(package="keras_balance")
class IMTLLLoss(MethodLoss):
    """IMTL-L (Liu et al. 2021); as a Keras loss, an error.

    The `"imtl_l"` balancer (`keras_balance.balancers.IMTLL`) learns one
    log-scale per term, which the model's optimizer must train; a loss passed
    to `compile(loss=...)` cannot provide that, so constructing this class
    raises an error that points to `BalancedModel` (or `PINNModel`), which
    trains them with the model.

    Args:
        epsilon: > 0, default 1e-12. Inverse cap of the scales.

    Example:

    >>> model = PINNModel(HelmholtzPDE(), balancer="imtl_l")  # instead
    """

    method = "imtl_l"
