"""scripts/gpu_check.py --device cpu --quick: every part of the GPU check runs on the CPU at tiny sizes, so the
script and the GPU tests cannot rot between the rare sessions with a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e  # the whole command, every part in its own process: a minute and a half on 2 cores
def test_gpu_check_runs_every_part_on_the_cpu_and_writes_its_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["quick"] is True
    assert {name: part["status"] for name, part in report["parts"].items()} == {
        "tests": "done", "speed": "done", "pack": "done", "study1": "done", "mps": "done"}
    cases = report["parts"]["tests"]["result"]["cases"]
    names = {c["test"].partition("[")[0] for c in cases}
    assert {"test_deterministic_true_gives_the_same_metrics_twice", "test_a_resumed_trial_continues_bit_exactly",
            "test_fp16_trains_with_its_grad_scaler_and_resumes_it", "test_compile_trains_and_matches_eager",
            "test_a_batch_too_big_for_the_card_ends_the_trial_as_oom",
            "test_the_probes_peak_memory_is_within_10_percent_of_a_trials",
            "test_augmentation_on_the_device_equals_the_cpu",
            "test_autoaugment_on_the_device_is_within_a_level_of_the_cpu"} <= names
    assert len(cases) >= 19 and all(c["status"] == "passed" for c in cases), cases  # 8 of the 11 models (--quick)
    speed = report["parts"]["speed"]["result"]["rows"]
    assert [r["row"] for r in speed][:3] == ["vgg6 bs1024 bf16+cl", "vgg6 bs64 bf16+cl", "resnet18 c100 bs256 bf16+cl"]
    assert all(r["s_per_epoch"] > 0 and len(r["epochs_s"]) == 2 for r in speed)
    pack = report["parts"]["pack"]["result"]
    assert [r["trials"] for r in pack["rows"]] == [1, 4] and pack["ratio"] > 0
    assert report["parts"]["mps"]["result"] == {"started": False, "why": "no GPU"}
    study = report["parts"]["study1"]["result"]
    assert study["num_samples"] == 111 and study["rungs"] == [45, 15, 5] and study["trials_per_gpu"] == 4
    assert len(study["rows"]) == 6  # batch 64, 128, 256, with and without AutoAugment
    projection = study["projection"]
    # ASHA stops most trials at its rungs: far fewer epochs than 111 trials' planned ones, more than 111 x 5
    assert all(555 <= p["epochs"] < 111 * 80 for p in projection.values())
    assert projection["1"]["wall_s"] > projection["8"]["wall_s"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("# gpu_check on ")
    assert "| goal: vgg6 bs1024, best way |" in table and "n/a (--quick)" in table
    assert "| study 1 on 1 GPU(s), 4 trials each:" in table


def test_the_gpu_path_imports_no_ray_optuna_or_wandb():
    """The GPU machine has torch, torchvision, numpy, pandas, pyarrow and pytest only."""
    code = ("import sys, runpy; sys.argv = ['gpu_check']; sys.path[:0] = ['scripts', 'tests/gpu']\n"
            "import gpu_check, test_gpu\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna', 'wandb', 'jinja2'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                         "TUNE_APP_CHECK_DEVICE": "cpu"}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
