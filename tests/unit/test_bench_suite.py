"""`make bench`'s report: the targets computed from one run's rows, and BENCHMARKS.md
rewritten only between its markers."""

from __future__ import annotations

from pathlib import Path

from seckill_bench.suite.h2load import OverloadRow
from seckill_bench.suite.scenarios import Results, Row, Settings
from seckill_bench.suite.table import BEGIN, END, targets, write_markdown


def results(tmp_path: Path, **rps: float) -> Results:
    settings = Settings(workers=2, concurrency=64, connections=4, procs=2, calls=100,
                        flash_users=100, flash_stock=50, soak_seconds=0, warmup_calls=0,
                        output=tmp_path / "BENCHMARKS.md", reports=tmp_path)
    run = Results(settings, started=0.0)
    run.rows = [Row(key, key, rps=value, p99=40.0 if key == "b" else 10.0)
                for key, value in rps.items()]
    return run


def test_targets_are_ratios_to_the_ceiling_and_the_p99_of_the_flash_sale(tmp_path: Path):
    judged = targets(results(tmp_path, a=1000, b=850, d=650, q=800))[:4]  # issue 20's follow
    assert [(measured.split()[0], met) for _, measured, met in judged] == [
        ("0.85", True), ("0.65", False), ("40.0", True), ("0.94", True)]
    assert "64 in flight" in judged[2][0]


def test_quantities_are_judged_against_the_one_unit_flash_sale(tmp_path: Path):
    # Within 10% of (b) in the same run, whatever (a) did.
    judged = targets(results(tmp_path, a=1000, b=900, q=800))
    assert judged[3][0].startswith("flash sale of 1-3 units (q) / flash sale (b)")
    assert judged[3][1:] == ("0.89 (800 / 900 req/s)", False)
    assert targets(results(tmp_path, a=1000, b=900))[3][1:] == ("—", None)


def test_a_row_not_measured_is_said_so(tmp_path: Path):
    judged = targets(results(tmp_path, a=1000, b=900))
    assert judged[1][1:] == ("—", None)


def test_only_the_bench_section_is_rewritten(tmp_path: Path):
    path = tmp_path / "BENCHMARKS.md"
    cluster = "<!-- cluster-table -->\n| kept | as is |\n<!-- cluster-table -->\n"
    path.write_text(f"# Benchmarks\n\nProse.\n\n{BEGIN}\nold run\n{END}\n\n{cluster}")
    write_markdown(path, "new run\n")
    assert path.read_text() == f"# Benchmarks\n\nProse.\n\n{BEGIN}\nnew run\n{END}\n\n{cluster}"


def test_the_h2load_targets_are_ratios_to_its_health_check_and_the_overload_share(
        tmp_path: Path) -> None:
    run = results(tmp_path, a=1000, e=850, g1=2000, g2=1500, g3=1700, g4=1800)
    run.rows.append(OverloadRow("h10000", "overload", rps=1600.0, answered_share=0.93))
    judged = {name.split(" ≥")[0]: (measured.split()[0], met)
              for name, measured, met in targets(run)[4:-1]}  # the last: the outbox's
    assert list(judged.values()) == [("0.85", True), ("0.90", True), ("0.75", False),
                                     ("0.85", True), ("10.0", True), ("93%", True),
                                     ("0.94", True)]


def test_the_outbox_target_is_the_sale_with_events_against_the_same_sale_without(
        tmp_path: Path) -> None:
    def outbox(run: Results) -> tuple[str, str, bool | None]:
        [found] = [t for t in targets(run) if "(n)" in t[0]]
        return found

    name, measured, met = outbox(results(tmp_path, a=1000, b=850, n=900))
    assert "(b)" in name and "0.9" in name
    assert measured.startswith("0.94 ") and met is True
    assert outbox(results(tmp_path, a=1000, b=700, n=900))[2] is False
    assert outbox(results(tmp_path, a=1000, b=700))[1:] == ("—", None)


