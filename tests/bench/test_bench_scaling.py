"""The scaling benchmark's sweeps, and the Helmholtz problem with K = 9 and 17 terms."""

import numpy as np
import pytest
import tensorflow as tf

import keras_balance as kb
from keras_balance.bench import scaling, scaling_table
from keras_balance.bench.timing import HELMHOLTZ_TERMS


@pytest.mark.parametrize("segments", [2, 4])
def test_edge_pieces_add_up_to_the_edges(segments):
    """Each edge's pieces partition it: their terms sum to the per-edge term, and every piece has points."""
    whole = kb.HelmholtzPDE(boundary="per_edge")
    split = kb.HelmholtzPDE(boundary="per_edge", segments=segments)
    assert split.num_terms == 1 + 4 * segments
    assert split.term_names[1:3] == ("L_b_left_1", "L_b_left_2")
    xy = whole.sample(64, 400, seed=0)
    preds = tf.constant(np.random.default_rng(0).normal(size=(len(xy), 3)), tf.float32)
    x, y = xy[:, :1], xy[:, 1:2]
    per_edge = [float(tf.reduce_mean(t)) for t in whole.compute_loss(x, y, preds)]
    pieces = [float(tf.reduce_mean(t)) for t in split.compute_loss(x, y, preds)]
    assert pieces[0] == pytest.approx(per_edge[0])
    for e in range(4):
        group = pieces[1 + e * segments: 1 + (e + 1) * segments]
        assert sum(group) == pytest.approx(per_edge[1 + e], rel=1e-5)
        assert min(group) > 0.0
    # The pieces follow the coordinate along the edge: left edge, lower half = y < 0.
    left_low = split.compute_loss(x, y, preds)[1].numpy().ravel()
    on = left_low > 0
    assert np.all(xy[on, 0] == -1.0) and np.all(xy[on, 1] < -1.0 + 2.0 / segments + 1e-6)


def test_segments_round_trip_and_bad_values():
    problem = kb.HelmholtzPDE(boundary="per_edge", segments=4)
    assert kb.HelmholtzPDE(**problem.get_config()).term_names == problem.term_names
    assert "segments" not in kb.HelmholtzPDE().get_config()
    with pytest.raises(ValueError, match="`segments` must be a positive integer.*0"):
        kb.HelmholtzPDE(boundary="per_edge", segments=0)
    with pytest.raises(ValueError, match="`segments` needs boundary='per_edge'"):
        kb.HelmholtzPDE(segments=2)


def test_helmholtz_terms_give_k_terms():
    for k, options in HELMHOLTZ_TERMS.items():
        assert kb.HelmholtzPDE(**options).num_terms == k


def test_scaling_sweeps_share_their_common_setting():
    rows = scaling(points=(32, 64), ks=(2, 9), balancers=("mgda",), base_points=32, base_k=2, steps=1, repeats=1)
    assert {(r["sweep"], r["points"], r["K"]) for r in rows} == {
        ("points", 40, 2), ("points", 80, 2), ("K", 40, 2), ("K", 40, 9)}
    assert {r["balancer"] for r in rows} == {"sum", "mgda"}
    assert all(r["ms_per_step"] > 0 for r in rows)
    assert all(r["ratio"] == 1.0 for r in rows if r["balancer"] == "sum")
    shared = [r for r in rows if (r["points"], r["K"]) == (40, 2)]
    assert len(shared) == 4 and shared[0]["ms_per_step"] in [r["ms_per_step"] for r in shared[2:]]
    table = scaling_table(rows, "K")
    assert table.splitlines()[0] == "| points | K | sum | mgda |" and len(table.splitlines()) == 4


def test_scaling_rejects_unknown_k():
    with pytest.raises(ValueError, match="`ks` must take values in"):
        scaling(ks=(4,), steps=1, repeats=1)
