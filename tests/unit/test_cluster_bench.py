"""The cluster benchmark's table lands between its markers and nowhere else."""

from __future__ import annotations

import argparse
from pathlib import Path

from seckill_cluster.bench import BEGIN, END, Cell, Row, render, write

ARGS = argparse.Namespace(seconds=10.0, warmup=2.0, concurrency=64, connections=4, procs=2)
ROWS = [Row("1 MariaDB server", 0, {"coalesced": Cell(900, 40, 90, 0),
                                    "per_request": Cell(300, 120, 400, 0)}),
        Row("3-node Galera", 2, None, "not measured: no netem")]


def test_the_table_shows_each_row_and_the_ratio() -> None:
    table = render(ROWS, ARGS)
    assert table.startswith(BEGIN) and table.endswith(END)
    assert "| 1 MariaDB server | 0 ms | 900 | 40.0 / 90.0 | 300 | 120.0 / 400.0 | 3.0x |" in table
    assert "| 3-node Galera | 2 ms | not measured: no netem |" in table


def test_a_new_run_replaces_only_the_part_between_the_markers(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nhand-written\n")
    write(render(ROWS, ARGS), path)
    first = path.read_text()
    assert first.startswith("# Benchmarks\n\nhand-written\n") and first.count(BEGIN) == 1
    path.write_text(first + "\nafter\n")
    write(f"{BEGIN}\nnew\n{END}", path)
    assert path.read_text() == first.partition(BEGIN)[0] + f"{BEGIN}\nnew\n{END}\n\nafter\n"
