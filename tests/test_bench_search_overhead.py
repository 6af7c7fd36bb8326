"""scripts/bench_search.py and scripts/bench_overhead.py run end to end in --quick mode (real sweeps through
tune_app's command, each script in its own process with its own Ray) and print their tables. Nothing is
timed here: only that the rows are there and hold numbers."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def run_script(name: str, tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("RAY_ADDRESS", None)  # the script starts its own local Ray
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / name), "--quick", "--storage-path",
                          str(tmp_path / "runs"), *args], capture_output=True, text=True, timeout=420, cwd=tmp_path,
                         env=env)
    assert out.returncode == 0, f"{name} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def table_row(out: str, label: str) -> list[str]:
    rows = [line for line in out.splitlines() if line.startswith(f"| {label}")]
    assert len(rows) == 1, f"expected one table row for {label!r} in:\n{out}"
    return [cell.strip() for cell in rows[0].strip().strip("|").split("|")]


def test_bench_search_quick_prints_every_method_against_the_grid(tmp_path):
    out = run_script("bench_search.py", tmp_path)
    assert "= 4 configurations" in out and "2 epochs" in out
    grid = table_row(out, "grid+fifo")
    assert grid[1] == "4" and grid[5] == "8" and NUMBER.match(grid[3])  # 4 configurations x 2 epochs
    assert 0 < float(grid[3]) <= 100
    for method in ("random+fifo", "optuna+fifo", "optuna+asha", "hyperopt+asha", "gp+fifo", "cmaes+fifo", "bohb",
                   "nsga2+fifo"):
        cells = table_row(out, method)
        best, low_high = re.match(r"^([\d.]+) \(([\d.]+ to [\d.]+)\)$", cells[3]).groups()
        assert float(best) <= float(grid[3])  # a searcher can find the grid's best, never beat it
        for cell in (cells[1], cells[2], cells[4], cells[5], cells[6], cells[9]):
            assert NUMBER.match(cell), (method, cells)
        assert re.match(r"^\d+ of 1$", cells[7]) and re.match(r"^\d+ of 1$", cells[8])
    determinism = re.search(r"Determinism: (\d+) of (\d+) FIFO trials repeated the grid's val_acc", out)
    assert determinism and determinism.group(1) == determinism.group(2) == "10"  # 5 FIFO sweeps x 2 trials
    assert re.search(r"^Goal: optuna\+asha within 0.5 points .* -> (PASS|FAIL) \(\d of 1 seeds met both\)$", out,
                     re.M)


def test_bench_overhead_quick_prints_the_sweep_against_its_ideal(tmp_path):
    out = run_script("bench_overhead.py", tmp_path)
    assert "4 trials" in out
    for label in ("whole command", "without the final analysis", "Tuner.fit alone"):
        cells = table_row(out, label)
        assert all(NUMBER.match(c) for c in cells[1:7]), cells
        assert cells[3] == "2" and re.match(r"^< 10 %: (PASS|FAIL)$", cells[7])
        assert float(cells[1]) > float(cells[4]) > 0  # the wall time exceeds the ideal
    for label in ("Ray start", "dataset load", "trial's actor", "trial setup in its actor", "rest of actor",
                  "training:", "report (+ checkpoint where due)", "final analysis", "total"):
        cells = table_row(out, label)
        assert all(NUMBER.match(c) for c in cells[1:]), cells
    assert table_row(out, "total")[2] == "100.0"  # the parts add up to the wall time
    assert re.search(r"fit's overhead falls under 10 % only with epochs of about \d+ s", out)
