"""tune_app's loader, trial and GPU benchmarks run end to end at tiny sizes and print their tables, so they cannot
rot unnoticed. The figures themselves are not judged here (the machine is shared); only that every expected row is
there with numbers in it. One torch thread each: two threads on a busy 2-core machine can be ten times slower."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def tables(stdout: str) -> list[list[list[str]]]:
    """Every markdown table in the output, as rows of cells, header row first, separator row left out."""
    found, current = [], None
    for line in stdout.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = [cells]
                found.append(current)
            elif not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        else:
            current = None
    return found


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_bench_loader_compares_the_tensor_path_with_the_dataloader():
    out = run("bench_loader.py", "--images", "512", "--rounds", "1", "--workers", "2", "--threads", "1")
    [table] = tables(out)
    assert table[0] == ["case", "path", "batches/s", "images/s", "x DataLoader, 2 workers"]
    rows = {(r[0], r[1]): r for r in table[1:]}
    expected_paths = ["tensor (tune_app, cpu)", "DataLoader, 2 workers", "DataLoader, 0 workers"]
    assert list(rows) == [(case, path) for case in ("crop+flip", "crop+flip+autoaugment") for path in expected_paths]
    for row in rows.values():
        assert number(row[2]) > 0 and number(row[3]) > 0 and number(row[4]) > 0
        assert abs(number(row[3]) - number(row[2]) * 256) <= 0.01 * number(row[3]) + 1  # images = batches x 256
    assert number(rows["crop+flip", "DataLoader, 2 workers"][4]) == 1.0  # the baseline
    assert "goal: crop+flip >= 10x DataLoader, 2 workers; measured " in out


def test_bench_trial_gives_the_models_share_of_the_epoch():
    out = run("bench_trial.py", "--images", "64", "--rounds", "1", "--threads", "1")
    assert "vgg6, 64 CIFAR-10-shaped images per epoch, crop+flip, device cpu, amp off" in out
    [table] = tables(out)
    assert table[0] == ["batch", "epoch s", "model s", "share", "plain epoch s", "images/s (plain)"]
    assert [r[0] for r in table[1:]] == ["64", "256"]
    for row in table[1:]:
        epoch, model, share = number(row[1]), number(row[2]), number(row[3])
        assert 0 < model <= epoch and 0 < share <= 1
        assert abs(share - model / epoch) < 0.01
        assert number(row[4]) > 0 and number(row[5]) > 0
    assert out.count("goal (cpu): share >= 0.9; batch ") == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the default run is the full GPU benchmark")
def test_bench_gpu_without_cuda_says_so_and_succeeds():
    assert run("bench_gpu.py").strip() == "no GPU: bench_gpu.py needs CUDA; nothing measured"


def test_bench_gpu_runs_its_code_path_on_a_cpu_when_allowed():
    # 5 images at batch 3: a full batch and the epoch's last, shorter one, as the trials warm up on (bf16 on a CPU
    # without bf16 instructions is emulated, about 0.25 s an image, so every image counts)
    out = run("bench_gpu.py", "--device", "cpu", "--allow-cpu", "--images", "5", "--batch-sizes", "3",
              "--modes", "fp32", "bf16_cl", "--trials", "1", "2", "--rounds", "1", "--pack-epochs", "1",
              "--matmul-size", "256", "--threads", "1", "--pack-threads", "1")
    precision, packing, floor = tables(out)
    assert precision[0] == ["mode", "batch", "s/epoch", "images/s", "x fp32"]
    assert [r[:2] for r in precision[1:]] == [["fp32", "3"], ["bf16_cl", "3"]]
    assert number(precision[1][4]) == 1.0 and number(precision[2][4]) > 0
    assert all(number(c) > 0 for r in precision[1:] for c in r[2:])

    assert packing[0] == ["trials", "aggregate images/s", "images/s per trial", "s/epoch per trial", "x 1 trial"]
    assert [r[0] for r in packing[1:]] == ["1", "2"]
    assert number(packing[1][4]) == 1.0 and number(packing[2][4]) > 0
    assert all(number(c) > 0 for r in packing[1:] for c in r[1:])

    assert floor[0][:4] == ["GFLOP/batch (fwd+bwd)", "TFLOP/epoch", "bf16 matmul TFLOP/s", "floor s/epoch"]
    assert "3. the floor: VGG6, batch 3 (2 batches of an epoch of 5 images)" in out
    gflop = number(floor[1][0])
    assert 37 * 3 / 64 < gflop < 38 * 3 / 64  # VGG6 fwd+bwd on 3 CIFAR images: about 3 x 0.195 GFLOP per image
    # TFLOP/epoch = GFLOP/batch x 5 / 3 / 1000, up to its 3 printed decimals and GFLOP's 2
    assert abs(number(floor[1][1]) - gflop * 5 / 3 / 1000) <= 0.0005 + 0.005 * 5 / 3 / 1000 + 1e-9
    assert all(number(c) > 0 for c in floor[1])
