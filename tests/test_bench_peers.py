"""scripts/bench_peers.py runs end to end in --quick mode (each of its four commands a real process with its own
Ray or none: 2 trials of 2 epochs, one round) and prints its table. Nothing is timed here: only that the four rows
are there with numbers, and that each sweep trained what it was asked to."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
CASES = ("tune_app quickstart, W&B offline", "tune_app, W&B disabled", "plain Optuna script", "plain Ray Tune script")


def cells(out: str, label: str, columns: int) -> list[list[str]]:
    """The table rows (of ``columns`` cells) that start with ``label``."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()
            if line.startswith(f"| {label} |")]
    return [r for r in rows if len(r) == columns]


def test_bench_peers_quick_prints_the_four_commands_against_plain_optuna(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_peers.py"), "--quick"], capture_output=True,
                         text=True, timeout=420, cwd=tmp_path, env=env)
    assert out.returncode == 0, f"exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    stdout = out.stdout
    assert "2 trials a sweep, epochs 2, 1 rounds" in stdout
    assert re.search(r"^load average after: [\d.]+ [\d.]+ [\d.]+; the benchmark took \d+ s$", stdout, re.M)
    for label in CASES:
        [row] = cells(stdout, label, 7)
        seconds, ratio, best, epochs, trials = (float(c) for c in row[2:])
        assert seconds > 0 and ratio > 0, row
        assert 0 < best <= 100, row
        # 2 trials of 2 epochs; grace period min(3, 2) = the last epoch, so nothing stops a trial early, but a
        # diverged trial would end after its first epoch
        assert trials == 2 and 2 <= epochs <= 4, row
        [each] = cells(stdout, label, 5)
        assert each[1] == "1" and float(each[2]) == seconds, each
    assert cells(stdout, "plain Optuna script", 7)[0][3] == "1.00"  # the baseline
    assert "--space digits --wandb-mode offline" in cells(stdout, CASES[0], 7)[0][1]
