"""Partial derivatives of a network's output with nested GradientTapes."""

import tensorflow as tf

COORDINATES = ("x", "y")


def parse_derivative(name, coordinates=COORDINATES):
    """Split a derivative name into its field and coordinate string.

    `"u"` -> `("u", "")`, `"w_xxyy"` -> `("w", "xxyy")`. The coordinate string
    is returned sorted in the order of `coordinates`, so `"u_yx"` and `"u_xy"`
    name the same (mixed) derivative of a smooth field.
    """
    field, _, orders = name.partition("_")
    unknown = set(orders) - set(coordinates)
    if not field or unknown:
        raise ValueError(
            f"Cannot parse the derivative name {name!r}: expected a field name, optionally "
            f"followed by '_' and coordinates from {coordinates} (e.g. 'u_xx')."
        )
    return field, "".join(sorted(orders, key=coordinates.index))


def _prefixes(orders):
    """All derivatives needed on the way to each requested one ("xxy" -> x, xx, xxy)."""
    needed = {""}
    for order in orders:
        for end in range(1, len(order) + 1):
            needed.add(order[:end])
    return needed


def partial_derivatives(fn, x, y, orders):
    """Evaluate `fn(x, y)` and the requested partial derivatives.

    Each derivative costs one `tape.gradient` call with respect to a single
    coordinate; derivatives of order n are taken with n nested tapes, and the
    lower-order intermediates are shared between the requested derivatives
    (`u_xxxx`, `u_xxyy` and `u_yyyy` need 10 gradient calls in all).

    Args:
        fn: a callable mapping `x`, `y` of shape (N, 1) to a field of shape (N, 1).
            Each output row must depend only on its own input row (true of any
            pointwise network: an MLP without batch statistics).
        x, y: tensors of shape (N, 1).
        orders: coordinate strings, e.g. `["", "xx", "yy"]` ("" is the field).

    Returns:
        A dict mapping each requested coordinate string to an (N, 1) tensor.
    """
    needed = _prefixes(orders)
    max_order = max(len(order) for order in needed)
    coordinates = {"x": x, "y": y}

    def evaluate(level):
        if level == 0:
            return {"": fn(x, y)}
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            tape.watch(y)
            values = evaluate(level - 1)
        for order in sorted(o for o in needed if len(o) == level):
            values[order] = tape.gradient(
                values[order[:-1]],
                coordinates[order[-1]],
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
        del tape
        return values

    values = evaluate(max_order)
    return {order: values[order] for order in orders}
