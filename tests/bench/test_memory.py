"""The memory benchmark: one process per configuration, the allocator's peak, the ratio to Sum."""

import pytest

from keras_balance.bench import memory_table, memory_table_rows, peak_memory


def test_rows_measure_each_configuration_in_its_own_process():
    rows = memory_table_rows("helmholtz", balancers=("sum", "mgda"), jacobian_modes=("loop",), steps=2,
                             n_interior=64)
    assert [(r["balancer"], r["jacobian_mode"]) for r in rows] == [("sum", None), ("mgda", "loop")]
    for row in rows:
        assert row["peak_mb"] > 0 and 0 <= row["step_mb"] <= row["peak_mb"]
        assert row["device"] in ("CPU:0", "GPU:0")
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] == pytest.approx(rows[1]["peak_mb"] / rows[0]["peak_mb"])
    table = memory_table(rows).splitlines()
    assert table[0].startswith("| balancer | per-term gradients | peak (MB)") and len(table) == 4


def test_a_failing_configuration_names_itself():
    with pytest.raises(RuntimeError, match="memory measurement of 'no_such_balancer'"):
        peak_memory("helmholtz", "no_such_balancer", steps=1, n_interior=16)
    with pytest.raises(ValueError, match="`n_interior` must be a positive integer"):
        peak_memory("helmholtz", "sum", n_interior=0)
