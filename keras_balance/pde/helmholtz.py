"""The Helmholtz equation of Bischof's article."""

import math

import numpy as np
import tensorflow as tf

from keras_balance.pde.base import EDGES, PDE, check_means, check_number, own_mean, sin

BOUNDARY_OPTIONS = ("combined", "per_axis", "per_edge")


class HelmholtzPDE(PDE):
    """Helmholtz equation on [-1, 1]^2 with zero Dirichlet boundary.

        u_xx + u_yy + k^2 u = q(x, y),
        q = (-(a1 pi)^2 - (a2 pi)^2 + k^2) sin(a1 pi x) sin(a2 pi y),
        u = 0 on the four edges,

    with the exact solution `u = sin(a1 pi x) sin(a2 pi y)`.

    Terms: `L_f`, the squared residual, and `L_b`, the squared boundary value
    (`boundary="per_edge"` gives one term per edge, `L_b_left`, `L_b_right`,
    `L_b_bottom`, `L_b_top`, as the ReLoBRaLo authors' repository does;
    `boundary="per_axis"` gives `L_b_x` for the edges x = const. and `L_b_y`
    for y = const., three terms in all). With `boundary="per_edge"`,
    `segments=n` splits every edge into n equal pieces along it, one term
    each (`L_b_left_1` ... `L_b_left_n`, ...): K = 1 + 4n terms, 9 for n = 2
    and 17 for n = 4, for studies of how a method scales with K. A corner
    belongs to both of its edges, as with every mask.

    `means="batch"` (default, the article's): every term is the mean of its
    per-point values over the whole batch, so the residual covers the
    boundary points too and a boundary term is scaled by the boundary's share
    of the batch. `means="own"` (the convention of Wang, Teng & Perdikaris'
    published code): the residual is the mean over the interior points, each
    edge's term the mean over that edge's points, and a term made of several
    edges is the sum of their means (`"combined"`: the sum of four edge
    means). See `keras_balance.pde.base.own_mean`.

    Reference: R. Bischof, "Improving PINNs through adaptive loss balancing",
    2023 (the article's benchmark; defaults k = 1, a1 = 1, a2 = 4).

    Args:
        k: wave number.
        a1, a2: frequencies of the exact solution in x and y.
        boundary: `"combined"` (one boundary term), `"per_axis"` (two) or
            `"per_edge"` (four, or 4 x `segments`).
        segments: positive int, the pieces of each edge with
            `boundary="per_edge"` (1: the whole edge).
        means: `"batch"` or `"own"`, see above.
    """

    derivatives = ("u", "u_xx", "u_yy")
    domain = ((-1.0, 1.0), (-1.0, 1.0))

    def __init__(self, k=1.0, a1=1.0, a2=4.0, boundary="combined", segments=1, means="batch"):
        k, a1, a2 = (check_number(n, v) for n, v in (("k", k), ("a1", a1), ("a2", a2)))
        if boundary not in BOUNDARY_OPTIONS:
            raise ValueError(
                f"Argument `boundary` must be one of {BOUNDARY_OPTIONS}; "
                f"received boundary={boundary!r}."
            )
        if isinstance(segments, bool) or not isinstance(segments, (int, np.integer)) or segments < 1:
            raise ValueError(f"Argument `segments` must be a positive integer; received segments={segments!r}.")
        if segments > 1 and boundary != "per_edge":
            raise ValueError(f"Argument `segments` needs boundary='per_edge'; received segments={segments!r} "
                             f"with boundary={boundary!r}.")
        self.k, self.a1, self.a2, self.boundary = float(k), float(a1), float(a2), boundary
        self.segments = int(segments)
        self.means = check_means(means)
        if boundary == "combined":
            self.term_names = ("L_f", "L_b")
        elif boundary == "per_axis":
            self.term_names = ("L_f", "L_b_x", "L_b_y")
        elif self.segments == 1:
            self.term_names = ("L_f",) + tuple(f"L_b_{edge}" for edge in EDGES)
        else:
            self.term_names = ("L_f",) + tuple(f"L_b_{edge}_{i + 1}" for edge in EDGES for i in range(self.segments))

    def get_config(self):
        config = {"k": self.k, "a1": self.a1, "a2": self.a2, "boundary": self.boundary}
        if self.segments > 1:
            config["segments"] = self.segments
        if self.means != "batch":
            config["means"] = self.means
        return config

    def _edge_pieces(self, x, y, masks):
        """Each edge's mask split into `segments` pieces along the edge, in the order of `term_names`."""
        (x0, x1), (y0, y1) = self.domain
        pieces = []
        for edge in EDGES:
            along, low, high = (y, y0, y1) if edge in ("left", "right") else (x, x0, x1)
            index = tf.clip_by_value(tf.floor((along - low) / (high - low) * self.segments), 0.0, self.segments - 1.0)
            pieces += [masks[edge] * tf.cast(tf.equal(index, float(i)), masks[edge].dtype)
                       for i in range(self.segments)]
        return pieces

    def source(self, x, y):
        """The right-hand side q(x, y)."""
        w1, w2 = self.a1 * math.pi, self.a2 * math.pi
        return (-(w1**2) - w2**2 + self.k**2) * sin(w1 * x) * sin(w2 * y)

    def residuals(self, x, y, fields):
        u = fields["u"]
        residual = fields["u_xx"] + fields["u_yy"] + self.k**2 * u - self.source(x, y)
        masks = self.boundary_masks(x, y)
        if self.means == "own":
            return self._own_means(residual, u, x, y, masks)
        if self.boundary == "per_edge" and self.segments > 1:
            return [tf.square(residual)] + [tf.square(piece * u) for piece in self._edge_pieces(x, y, masks)]
        if self.boundary == "per_edge":
            return [tf.square(residual)] + [tf.square(masks[edge] * u) for edge in EDGES]
        if self.boundary == "per_axis":
            x_edges = tf.maximum(masks["left"], masks["right"])
            y_edges = tf.maximum(masks["bottom"], masks["top"])
            return [tf.square(residual), tf.square(x_edges * u), tf.square(y_edges * u)]
        on_boundary = tf.reduce_max(tf.stack(list(masks.values())), axis=0)
        return [tf.square(residual), tf.square(on_boundary * u)]

    def _own_means(self, residual, u, x, y, masks):
        on_boundary = tf.reduce_max(tf.stack(list(masks.values())), axis=0)
        terms = [own_mean(tf.square(residual), 1.0 - on_boundary)]
        if self.boundary == "per_edge":
            pieces = self._edge_pieces(x, y, masks) if self.segments > 1 else [masks[edge] for edge in EDGES]
            return terms + [own_mean(tf.square(u), piece) for piece in pieces]
        edge = {name: own_mean(tf.square(u), masks[name]) for name in EDGES}
        if self.boundary == "per_axis":
            return terms + [edge["left"] + edge["right"], edge["bottom"] + edge["top"]]
        return terms + [tf.add_n([edge[name] for name in EDGES])]

    def exact(self, x, y):
        return sin(self.a1 * math.pi * x) * sin(self.a2 * math.pi * y)

    def exact_preds(self, x, y):
        u = np.asarray(self.exact(np.asarray(x, "float64"), np.asarray(y, "float64"))).reshape(-1, 1)
        w1, w2 = self.a1 * math.pi, self.a2 * math.pi
        return np.concatenate([u, -(w1**2) * u, -(w2**2) * u], axis=1)
