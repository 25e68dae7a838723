"""Per-term gradients for a gradient-level balancer, and the update they combine into.

`BalancedModel` records the forward pass on a tape; the functions here take
that tape and return the gradients to apply, one per trainable variable,
together with the balancer's K weights. Three modes (`JACOBIAN_MODES`):

- `"loop"`: one `tape.gradient` per term, the exact K x P Jacobian;
- `"vectorized"`: one `tape.jacobian` with pfor, the same Jacobian;
- `"features"`: gradients with respect to a shared representation
  (LibMTL's `rep_grad`, TorchJD's features): the weights come from the
  K x (N*F) Jacobian of the representation, then one backward pass through
  the trunk carries the combined gradient.

Under `tf.distribute` the balancer sees the Jacobian of the global batch, so
every replica computes the same weights.
"""

import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_balance import compat, distribute

#: How `BalancedModel` obtains the per-term gradients of a gradient-level balancer.
JACOBIAN_MODES = ("loop", "vectorized", "features")
JACOBIAN_SCOPES = ("shared", "kernel", "kernels")

# model -> (feature layer name, model returning (features, outputs)). A view
# on the model's own layers, kept out of Keras' tracking so that saving does
# not see its variables twice.
_FEATURE_MODELS = weakref.WeakKeyDictionary()


def check_mode(mode):
    """Validate a `jacobian_mode` argument."""
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"Argument `jacobian_mode` must be one of {JACOBIAN_MODES}; received jacobian_mode={mode!r}.")
    return mode


def jacobian_dtype(variables):
    """float64 when the model trains float64 variables, else float32 (never less)."""
    return "float64" if any(v.dtype == "float64" for v in variables) else "float32"


def zeros_for_none(grads, variables):
    """Zero gradients for the variables a loss does not touch."""
    return [tf.zeros(v.shape, v.dtype) if g is None else g for g, v in zip(grads, variables)]


def loss_scale(optimizer):
    """The factor `optimizer.scale_loss` multiplies a loss by (1 without mixed precision)."""
    return optimizer.scale_loss(tf.constant(1.0, "float32"))


def balancer_weights(balancer, jacobian, losses, scheduled, segments=None):
    """The balancer's weights for a Jacobian.

    `scheduled`: the per-term gradients are there every step, but the
    balancer updates its weights only when `needs_jacobian()` and holds them
    otherwise (a decision read from its checkpointed `step` in the graph).
    `segments`: the number of columns of each variable, in order (passed on
    to balancers with per-layer statistics, `uses_segments`).
    """
    if not balancer.uses_segments:
        segments = None
    if not scheduled:
        return balancer.weigh(jacobian, losses, segments=segments)
    return tf.cond(
        balancer.needs_jacobian(),
        lambda: balancer.weigh(jacobian, losses, segments=segments),
        lambda: tf.cast(balancer.hold(losses), jacobian.dtype),
    )


def weighted_gradients(tape, term_list, weights, variables):
    """Gradients of `sum_i w_i L_i` with the weights held constant (one backward pass)."""
    weights = tf.stop_gradient(tf.cast(weights, "float32"))
    # The tape has stopped recording: weight the terms' gradients through
    # `output_gradients` rather than by forming the weighted sum.
    return tape.gradient(term_list, variables, output_gradients=tf.unstack(weights))


def scope_variables(model, variables, shared):
    """The indices of the variables the balancer's Jacobian covers.

    All `shared` ones (touched by every term); for a balancer whose
    `jacobian_scope` is `"kernels"`, the shared kernels (variables of rank
    >= 2, no biases); for `"kernel"`, one layer's kernel: the balancer's
    `layer`, or the last kernel every term shares.
    """
    balancer = model.balancer
    if balancer.jacobian_scope not in JACOBIAN_SCOPES:
        raise ValueError(
            f"Balancer {balancer.name!r} declares jacobian_scope={balancer.jacobian_scope!r}; "
            f"expected one of {JACOBIAN_SCOPES}."
        )
    if balancer.jacobian_scope == "shared":
        return shared
    kernels = [i for i in shared if len(variables[i].shape) >= 2]
    if balancer.jacobian_scope == "kernels":
        if not kernels:
            raise ValueError("No kernel (a variable of rank >= 2) is shared by every loss term.")
        return kernels
    name = balancer.layer
    if name is not None:
        kernel = getattr(model.get_layer(name), "kernel", None)
        if kernel is None:
            raise ValueError(f"Layer {name!r} (the balancer's `layer`) has no kernel.")
        matches = [i for i, v in enumerate(variables) if v is kernel or v.path == kernel.path]
        if not matches or matches[0] not in shared:
            raise ValueError(f"The kernel of layer {name!r} must be trained and touched by every loss term.")
        return matches[:1]
    if not kernels:
        raise ValueError("No kernel (a variable of rank >= 2) is shared by every loss term.")
    return kernels[-1:]


def parameter_gradients(model, tape, term_list, terms, losses, variables, vectorized, scheduled=False):
    """Per-term gradients with respect to the parameters -> `(grads, weights)`.

    One `tape.gradient` per term of `term_list`, or (`vectorized`) one
    `tape.jacobian` of the (K,) tensor `terms` recorded by the tape.
    """
    balancer = model.balancer
    if vectorized:
        # Which term touches which variable is static: unused gradients are
        # pruned from the compiled step.
        connected = [[g is not None for g in tape.gradient(t, variables)] for t in term_list]
        jacobians = tape.jacobian(terms, variables, experimental_use_pfor=True)
        per_term = [
            [None if j is None or not connected[i][v] else j[i] for v, j in enumerate(jacobians)]
            for i in range(len(term_list))
        ]
    else:
        per_term = [tape.gradient(term, variables) for term in term_list]
    # Under tf.distribute: the per-term gradients of the global batch,
    # averaged over replicas before the balancer combines them.
    per_term = distribute.replica_mean(per_term)
    untouched = [i for i, grads in enumerate(per_term) if all(g is None for g in grads)]
    if untouched:
        names = [model.term_names[i] for i in untouched]
        raise ValueError(
            f"The loss terms {names} have no gradient path to the trainable variables, so a "
            f"gradient-level balancer cannot weigh them; received terms {list(model.term_names)}. "
            "Compute every term from the model's prediction (or trainable variables)."
        )
    touched = [sum(grads[v] is not None for grads in per_term) for v in range(len(variables))]
    shared = [v for v, count in enumerate(touched) if count == len(term_list)]
    scope = scope_variables(model, variables, shared)
    if not scope:
        raise ValueError(
            "No trainable variable is touched by every loss term, so a gradient-level balancer "
            "has nothing to combine."
        )
    dtype = jacobian_dtype(variables)
    rows = [tf.concat([tf.reshape(tf.cast(grads[v], dtype), [-1]) for v in scope], 0) for grads in per_term]
    jacobian = tf.stack(rows) / tf.cast(loss_scale(model.optimizer), dtype)
    segments = [int(np.prod(variables[v].shape)) for v in scope]
    directed = {}
    if balancer.combines_rows:
        weights = balancer_weights(balancer, jacobian, losses, scheduled, segments)
    else:
        # A direction that is not J^T w (GradDrop, DB-MTL): split it back
        # over the variables of the Jacobian, in the loss scale of the terms.
        direction, weights = balancer.direct(jacobian, losses)
        direction = direction * tf.cast(loss_scale(model.optimizer), direction.dtype)
        for v, piece in zip(scope, tf.split(direction, segments)):
            directed[v] = tf.reshape(piece, variables[v].shape)
    grads = []
    for v, variable in enumerate(variables):
        parts = [(i, g[v]) for i, g in enumerate(per_term) if g[v] is not None]
        if v in directed:
            grads.append(tf.cast(directed[v], parts[0][1].dtype))
        elif not parts:
            grads.append(tf.zeros(variable.shape, variable.dtype))
        elif v in shared or balancer.weights_all_parameters:
            # The direction J^T w, restricted to this variable.
            grads.append(tf.add_n([tf.cast(weights[i], g.dtype) * g for i, g in parts]))
        else:
            # Task-specific parameters: the plain sum of their gradients.
            grads.append(tf.add_n([g for _, g in parts]))
    return grads, weights


def feature_model(model):
    """A model returning `(output of model.feature_layer, outputs)`, built once per layer name."""
    cached = _FEATURE_MODELS.get(model)
    if cached is not None and cached[0] == model.feature_layer:
        return cached[1]
    if not compat.is_functional(model):
        raise ValueError(
            "`feature_layer` needs a functional BalancedModel; a subclassed model can use "
            "jacobian_mode='features' with feature_layer=None (gradients with respect to "
            "its outputs)."
        )
    layer = model.get_layer(model.feature_layer)
    outputs = getattr(model, "_outputs_struct", model.outputs)
    view = keras.Model(model.inputs, [layer.output, outputs])
    _FEATURE_MODELS[model] = (model.feature_layer, view)
    return view


def _feature_slices(flat):
    offset = 0
    for f in flat:
        size = int(np.prod(f.shape))
        yield f, offset, size
        offset += size


def feature_gradients(model, tape, term_list, losses, features, variables, scheduled=False):
    """Per-term gradients with respect to a shared representation (rep_grad) -> `(grads, weights)`."""
    balancer = model.balancer
    flat = keras.tree.flatten(features)
    dtype = jacobian_dtype(variables)
    rows = []
    for term in term_list:
        grads = tape.gradient(term, flat, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        rows.append(tf.concat([tf.reshape(tf.cast(g, dtype), [-1]) for g in grads], 0))
    jacobian = tf.stack(rows)
    # The balancer sees the unscaled Jacobian of the global batch: each
    # replica's representation gradients of the mean terms, side by side.
    scale = tf.cast(loss_scale(model.optimizer), dtype) * distribute.num_replicas()
    gathered = tf.reshape(distribute.gather_columns(jacobian), [len(term_list), -1])
    if not balancer.combines_rows:
        return _directed_feature_gradients(model, tape, term_list, gathered / scale, losses, flat, variables,
                                           scale, int(jacobian.shape[1]))
    weights = balancer_weights(balancer, gathered / scale, losses, scheduled)
    if balancer.weights_all_parameters or model.feature_layer is None:
        grads = weighted_gradients(tape, term_list, weights, variables)
    else:
        # Trunk: one backward pass with the combined representation gradient.
        combined = [
            tf.reshape(tf.linalg.matvec(jacobian[:, offset : offset + size], weights, transpose_a=True), f.shape)
            for f, offset, size in _feature_slices(flat)
        ]
        trunk = tape.gradient(
            flat, variables, output_gradients=[tf.cast(c, f.dtype) for c, f in zip(combined, flat)]
        )
        # Heads (after the representation): the plain sum of their terms' gradients.
        heads = tape.gradient(term_list, variables)
        grads = [t if t is not None else h for t, h in zip(trunk, heads)]
    return zeros_for_none(grads, variables), weights


def _directed_feature_gradients(model, tape, term_list, jacobian, losses, flat, variables, scale, columns):
    """Representation gradients combined by a direction method (GradDrop), carried back through the trunk."""
    direction, weights = model.balancer.direct(jacobian, losses)
    # This replica's columns of the global direction, in the loss scale of its own terms.
    context = tf.distribute.get_replica_context()
    replica = 0 if context is None else context.replica_id_in_sync_group
    local = tf.gather(tf.reshape(direction, [-1, columns]), replica) * tf.cast(scale, direction.dtype)
    combined = [tf.cast(tf.reshape(local[offset : offset + size], f.shape), f.dtype)
                for f, offset, size in _feature_slices(flat)]
    trunk = tape.gradient(flat, variables, output_gradients=combined)
    if model.feature_layer is None:
        # The representation is the model's outputs: every variable is trunk.
        return zeros_for_none(trunk, variables), weights
    # Heads (after the representation): the plain sum of their terms' gradients.
    heads = tape.gradient(term_list, variables)
    grads = [t if t is not None else h for t, h in zip(trunk, heads)]
    return zeros_for_none(grads, variables), weights


__all__ = [
    "JACOBIAN_MODES",
    "balancer_weights",
    "check_mode",
    "feature_gradients",
    "feature_model",
    "parameter_gradients",
    "scope_variables",
    "weighted_gradients",
]
