"""One command that checks tune_app's training on a GPU: correctness tests, speed goals, packing, study 1's time.

    PYTHONPATH=. python scripts/gpu_check.py --out gpu_check                 # on a GPU machine: at most 8 minutes
    PYTHONPATH=. python scripts/gpu_check.py --device cpu --quick --out DIR  # the same code at tiny sizes (tests)

Needs torch, torchvision, numpy and pytest, and the project's Ray-free modules (``trainables/``, the run-directory
tables, the cost estimate's probe arithmetic): no Ray, Optuna or W&B, nothing installed, no internet. Each part
runs in a process of its own under a time cap, so that the whole run ends inside ``--budget-s`` (480 s) even when
a part is slow; what a cap cut short or skipped is printed. Parts, in order:

1. ``tests``: ``pytest -m gpu tests/gpu`` (bf16 and channels_last for every built-in model, determinism, bit-exact
   resume, fp16 and its grad scaler, ``compile`` against eager, a real CUDA OOM ending as status ``oom``, the
   memory probe against a trial's ``max_memory_allocated``, augmentations against the CPU's).
2. ``speed``: seconds per training epoch of 45,000 CIFAR-shaped images resident on the device, through the
   trainable's own ``train_epoch`` (crop 4 + flip, SGD), median of the timed epochs after a warm-up one (cuDNN's
   autotuning, compilation): VGG6 at batch 1024 and 64, eager and compiled, ResNet-18 on 100 classes at 256.
3. ``pack``: 1 and 4 VGG6 trials (batch 256, bf16 + channels_last) as separate processes on the one device, as
   Ray runs them; aggregate images/s and the ratio. Then the same 4 under CUDA MPS where its daemon starts.
4. ``study1``: 4 packed VGG6 trials time an epoch (train + 5,000 validation images) at each batch size of study 1
   with and without AutoAugment; the event simulation of its ASHA schedule (``tune_app.cost.schedule``, as
   ``--plan --gpus`` uses it) over 111 configurations drawn from its space (read from
   ``search_spaces/cifar_vgg6.py`` without importing Ray; uniform draws, where Optuna's TPE picks) gives the
   epochs it trains and its wall time on 1, 2, 4 and 8 GPUs at 4 trials each.

Writes ``gpu_check.json`` (every figure) and ``gpu_check.md`` (the table) into ``--out``; exit 1 when a test or a
part failed, 0 otherwise (a missed speed goal is a figure, not a failure).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _bench import FitTrial, packed_workers, sync, warm_up_images  # noqa: E402  (scripts/ is on sys.path)

from trainables.device_loop import DeviceData, evaluate_model  # noqa: E402
from tune_app.cost.schedule import Asha, asha_rungs, simulate  # noqa: E402  (Ray-free)

EPOCH_IMAGES, VAL_IMAGES = 45_000, 5_000  # CIFAR's training split as a sweep holds it, and its validation split
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CAPS = {"tests": 130, "speed": 170, "pack": 60, "study1": 80, "mps": 40}  # seconds; the budget caps them all
BUDGET_S = 480
# (row, model, classes, batch size, torch.compile mode or None, goal s/epoch or None, goal's group)
SPEED_ROWS = [  # compile: None (eager), "trainable" (what compile: true does: compile_model) or a torch.compile mode
    ("vgg6 bs1024 bf16+cl", "vgg6", 10, 1024, None, 0.5, "vgg6 bs1024"),
    ("vgg6 bs64 bf16+cl", "vgg6", 10, 64, None, 2.5, "vgg6 bs64"),
    ("resnet18 c100 bs256 bf16+cl", "resnet18", 100, 256, None, 6.0, "resnet18 bs256"),
    ("vgg6 bs64 bf16+cl compile: true", "vgg6", 10, 64, "trainable", 2.5, "vgg6 bs64"),
    ("vgg6 bs1024 bf16+cl compile: true", "vgg6", 10, 1024, "trainable", 0.5, "vgg6 bs1024"),
    ("vgg6 bs64 bf16+cl compile mode=default", "vgg6", 10, 64, "default", 2.5, "vgg6 bs64"),
]
PACK_GOAL, PACK_TRIALS, PACK_BATCH = 2.5, 4, 256
STUDY_GOAL_MIN, STUDY_SPACE = 30.0, ROOT / "search_spaces" / "cifar_vgg6.py"


# --- one trial's training, as fit sets it up -------------------------------------------------------------------

def make_images(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, classes, n).astype(np.int64)


class Trainer(FitTrial):
    """One trial's model, optimizer and device-resident data, built as ``fit`` builds them (FitTrial)."""

    def __init__(self, device: torch.device, images: int, model: str = "vgg6", classes: int = 10,
                 batch_size: int = 256, compile_mode: str | None = None, seed: int = 0, val: int = 0, **extra):
        x, y = make_images(images + val, classes, seed)
        self.data = DeviceData(x[:images], y[:images], MEAN, STD, device)
        self.val = DeviceData(x[images:], y[images:], MEAN, STD, device)
        warm = warm_up_images(images, batch_size)
        self.warm_data = DeviceData(x[:warm], y[:warm], MEAN, STD, device)  # a full batch and the last one
        super().__init__(device, {"model": model, "batch_size": batch_size, **extra}, images, classes, seed,
                         compile_mode)

    def epoch(self, warm: bool = False) -> tuple[float, int]:
        """(wall s, images) of one train_epoch."""
        return self.train(self.warm_data if warm else self.data)

    def evaluate(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        evaluate_model(self.model, self.val, self.cfg["eval_batch_size"], self.precision)
        sync(self.device)
        return time.perf_counter() - t0


# --- parts, each in a process of its own ---------------------------------------------------------------------

def part_tests(args, out: Path) -> dict:
    xml = out / "gpu_tests.xml"
    env = {**os.environ, "TUNE_APP_CHECK_DEVICE": args.device, "TUNE_APP_CHECK_QUICK": "1" if args.quick else "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-s",
                           "--junitxml", str(xml), str(ROOT / "tests" / "gpu")], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        status = "failed" if failed is not None else ("skipped" if case.find("skipped") is not None else "passed")
        cases.append({"test": case.get("name"), "status": status, "s": float(case.get("time", 0)),
                      "message": (failed.get("message") or "")[:300] if failed is not None else ""})
    return {"returncode": proc.returncode, "cases": cases}


def part_speed(args, out: Path) -> dict:
    device = torch.device(args.device)
    rows = []
    for name, model, classes, bs, mode, goal, group in SPEED_ROWS:
        if args.quick:  # tiny: a CPU compiles and trains VGG6 slowly
            model, bs = ("digits_cnn" if mode else model), min(bs, 64)
        images = 2 * min(bs, 64) if args.quick else EPOCH_IMAGES
        t0 = time.perf_counter()
        trainer = Trainer(device, images, model, classes, bs, mode)
        trainer.epoch(warm=True)
        warm_s = time.perf_counter() - t0
        walls = [trainer.epoch()[0] for _ in range(args.rounds)]
        rows.append({"row": name, "model": model, "batch_size": bs, "compile": mode, "images": images,
                     "s_per_epoch": statistics.median(walls), "epochs_s": walls, "setup_and_warm_s": warm_s,
                     "images_per_s": images / statistics.median(walls), "goal_s": goal, "group": group})
        save(out / "speed.json", {"rows": rows})  # a cap that cuts the part short keeps the rows measured
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows}


def worker(spec: dict) -> None:
    """A packed trial (``--worker``): for each phase, set up and warm up, say ready, wait for go, train, report."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    for phase in spec["phases"]:
        trainer = Trainer(device, seed=spec["index"], **phase)
        trainer.epoch(warm=True)
        if trainer.val is not None and len(trainer.val):
            trainer.evaluate()
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.monotonic()
        epochs = [trainer.epoch() for _ in range(spec["epochs"])]
        eval_s = trainer.evaluate() if len(trainer.val) else 0.0
        end = time.monotonic()
        print(json.dumps({"start": start, "end": end, "images": sum(s for _, s in epochs),
                          "epoch_s": [w for w, _ in epochs], "eval_s": eval_s}), flush=True)
        del trainer


def packed(k: int, phases: list[dict], args, env: dict | None = None) -> list[list[dict]]:
    """k workers in lockstep through ``phases``; for each phase, each worker's timings."""
    threads = max(1, len(os.sched_getaffinity(0)) // k)
    specs = [{"index": i, "device": args.device, "phases": phases, "epochs": args.pack_epochs, "threads": threads}
             for i in range(k)]
    return packed_workers(__file__, specs, len(phases), env)


def aggregate(phase: list[dict]) -> dict:
    window = max(r["end"] for r in phase) - min(r["start"] for r in phase)
    return {"trials": len(phase), "images_per_s": sum(r["images"] for r in phase) / window,
            "s_per_epoch": statistics.median(s for r in phase for s in r["epoch_s"]),
            "eval_s": statistics.median(r["eval_s"] for r in phase)}


def pack_phase(args) -> dict:
    return {"images": args.pack_images, "batch_size": PACK_BATCH}


def part_pack(args, out: Path) -> dict:
    rows = [aggregate(packed(k, [pack_phase(args)], args)[0]) for k in (1, PACK_TRIALS)]
    return {"rows": rows, "ratio": rows[1]["images_per_s"] / rows[0]["images_per_s"]}


def part_mps(args, out: Path) -> dict:
    """The 4 packed trials again under CUDA MPS: its daemon started here with private pipe and log folders."""
    control = shutil.which("nvidia-cuda-mps-control")
    if args.device != "cuda" or not control:
        return {"started": False, "why": "no nvidia-cuda-mps-control on PATH" if args.device == "cuda" else "no GPU"}
    folder = Path(tempfile.mkdtemp(prefix="mps"))
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    (folder / "pipe").mkdir()
    (folder / "log").mkdir()
    start = subprocess.run([control, "-d"], env=env, capture_output=True, text=True, timeout=20)
    if start.returncode != 0:
        return {"started": False, "why": f"nvidia-cuda-mps-control -d: {(start.stderr or start.stdout).strip()}"}
    try:
        rows = [aggregate(packed(k, [pack_phase(args)], args, env)[0]) for k in (1, PACK_TRIALS)]
        return {"started": True, "rows": rows, "ratio": rows[1]["images_per_s"] / rows[0]["images_per_s"]}
    finally:
        subprocess.run([control], input="quit\n", env=env, capture_output=True, text=True, timeout=20)


def study_space(path: Path = STUDY_SPACE) -> tuple[dict, dict]:
    """The ``tune.choice`` lists and constants of a space file's SPACE, and its SETTINGS, read without importing it
    (it imports Ray)."""
    tree = ast.parse(path.read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Dict):
            found[node.targets[0].id] = node.value
    space = {}
    for key, value in zip(found["SPACE"].keys, found["SPACE"].values):
        if isinstance(value, ast.Call) and getattr(value.func, "attr", "") == "choice":
            space[ast.literal_eval(key)] = ast.literal_eval(value.args[0])
        elif not isinstance(value, ast.Call):
            space[ast.literal_eval(key)] = [ast.literal_eval(value)]
    return space, ast.literal_eval(found["SETTINGS"])


def study_trials(space: dict, settings: dict, epoch_s: dict, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(settings["num_samples"]):
        bs, aa = (space[k][rng.integers(len(space[k]))] for k in ("batch_size", "autoaugment"))
        epochs = min(space["epochs"][rng.integers(len(space["epochs"]))], settings.get("max_epochs") or 10**9)
        out.append({"batch_size": bs, "autoaugment": aa, "epochs": epochs, "epoch_s": epoch_s[bs, aa]})
    return out


def part_study1(args, out: Path) -> dict:
    space, settings = study_space()
    per_gpu = round(1 / settings.get("gpus_per_trial") if settings.get("gpus_per_trial") else PACK_TRIALS)
    combos = [(bs, aa) for bs in space["batch_size"] for aa in space["autoaugment"]]
    phases = [{"images": args.study_images, "batch_size": bs, "autoaugment": aa, "val": args.study_val}
              for bs, aa in combos]
    timed = packed(per_gpu, phases, args)
    rows, epoch_s = [], {}
    for (bs, aa), phase in zip(combos, timed):
        a = aggregate(phase)
        epoch_s[bs, aa] = (a["s_per_epoch"] * EPOCH_IMAGES / args.study_images
                           + a["eval_s"] * VAL_IMAGES / args.study_val)
        rows.append({"batch_size": bs, "autoaugment": aa, "measured_images": args.study_images,
                     "train_s": a["s_per_epoch"], "eval_s": a["eval_s"], "epoch_s": epoch_s[bs, aa]})
    trials = study_trials(space, settings, epoch_s)
    rungs = asha_rungs(settings["max_epochs"], settings["grace_period"], settings["reduction_factor"])
    projection = {gpus: simulate(trials, per_gpu * gpus, Asha(rungs, settings["reduction_factor"]))
                  for gpus in (1, 2, 4, 8)}
    return {"trials_per_gpu": per_gpu, "rows": rows, "rungs": rungs, "num_samples": len(trials),
            "projection": {str(g): p for g, p in projection.items()}}


PARTS = {"tests": part_tests, "speed": part_speed, "pack": part_pack, "study1": part_study1, "mps": part_mps}


def save(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


# --- the driver ----------------------------------------------------------------------------------------------

def run_part(name: str, args, out: Path, timeout: float) -> dict:
    argv = [sys.executable, __file__, "--part", name, "--out", str(out), "--device", args.device,
            "--rounds", str(args.rounds)] + (["--quick"] if args.quick else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        partial = load(out / f"{name}.json")
        return {"status": "cut", "why": f"stopped at its cap of {timeout:.0f} s", "s": time.perf_counter() - t0,
                "log": ((e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or ""))[-1500:],
                **({"result": partial} if partial else {})}
    result = load(out / f"{name}.json")
    if proc.returncode != 0 or result is None:
        return {"status": "failed", "why": (proc.stderr or proc.stdout).strip()[-1500:], "s": time.perf_counter() - t0}
    failed = name == "tests" and result["returncode"] != 0
    return {"status": "failed" if failed else "done", "s": time.perf_counter() - t0, "result": result}


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def table(report: dict) -> str:
    """One Markdown table: every figure, its goal and whether it was met."""
    lines = ["| check | figure | goal | verdict |", "| --- | ---: | --- | --- |"]
    quick = report["quick"]

    def verdict(ok: bool) -> str:
        return "n/a (--quick)" if quick else ("met" if ok else "NOT met")

    parts = report["parts"]
    tests = parts.get("tests", {})
    for case in tests.get("result", {}).get("cases", []):
        lines.append(f"| test {case['test']} | {case['s']:.1f} s | passes | {case['status']} |")
    speed = parts.get("speed", {}).get("result", {}).get("rows", [])
    best: dict[str, float] = {}
    for row in speed:
        goal = f"< {row['goal_s']:g} s" if row["goal_s"] else ""
        lines.append(f"| {row['row']} ({row['images']} images) | {row['s_per_epoch']:.3f} s/epoch, "
                     f"{row['images_per_s']:,.0f} images/s | {goal} | |")
        best[row["group"]] = min(best.get(row["group"], float("inf")), row["s_per_epoch"])
    for row in speed:
        if row["goal_s"] and best.get(row["group"]) == row["s_per_epoch"]:
            lines.append(f"| goal: {row['group']}, best way | {row['s_per_epoch']:.3f} s/epoch ({row['row']}) | "
                         f"< {row['goal_s']:g} s | {verdict(row['s_per_epoch'] < row['goal_s'])} |")
    for key, label in (("pack", "4 packed VGG6 trials / 1, aggregate images/s"), ("mps", "the same under CUDA MPS")):
        r = parts.get(key, {}).get("result")
        if r and r.get("rows"):
            rates = f"{r['rows'][0]['images_per_s']:,.0f} -> {r['rows'][1]['images_per_s']:,.0f}"
            lines.append(f"| {label} | {r['ratio']:.2f}x ({rates}) | >= {PACK_GOAL}x | "
                         f"{verdict(r['ratio'] >= PACK_GOAL)} |")
        elif r:
            lines.append(f"| {label} | not run: {r.get('why')} | >= {PACK_GOAL}x | |")
    study = parts.get("study1", {}).get("result")
    if study:
        for row in study["rows"]:
            lines.append(f"| study 1 packed epoch, bs {row['batch_size']}, AutoAugment {row['autoaugment']} | "
                         f"{row['epoch_s']:.2f} s | | |")
        for gpus, p in study["projection"].items():
            goal = f"<= {STUDY_GOAL_MIN:g} min" if gpus == "1" else ""
            ok = verdict(p["wall_s"] / 60 <= STUDY_GOAL_MIN) if gpus == "1" else ""
            lines.append(f"| study 1 on {gpus} GPU(s), {study['trials_per_gpu']} trials each: {p['epochs']} epochs | "
                         f"{p['wall_s'] / 60:.1f} min | {goal} | {ok} |")
    for name, part in parts.items():
        if part["status"] != "done":
            lines.append(f"| part {name} | {part['status']}: {part.get('why', '')[:200]} | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help="tiny sizes: the code paths, not the figures (tests)")
    p.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for gpu_check.json/.md")
    p.add_argument("--budget-s", type=float, default=None, help=f"the whole run's cap (default {BUDGET_S}; "
                   "--quick on a CPU: 900)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    p.add_argument("--rounds", type=int, default=2, help="timed epochs per speed row (default 2)")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.pack_images = 128 if args.quick else EPOCH_IMAGES // 3
    args.pack_epochs = 1 if args.quick else 2
    args.study_images, args.study_val = (64, 32) if args.quick else (9_000, VAL_IMAGES)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part:
        save(args.out / f"{args.part}.json", PARTS[args.part](args, args.out))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; run it on a GPU machine, or pass --device cpu --quick")
        return 2
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        print(f"gpu_check: unknown part {unknown[0]!r}; parts are {', '.join(PARTS)}")
        return 2
    budget = args.budget_s or (900 if args.quick else BUDGET_S)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "CPU"
    report = {"device": card, "torch": torch.__version__, "quick": args.quick, "budget_s": budget, "parts": {}}
    start = time.perf_counter()
    for name in names:
        left = budget - (time.perf_counter() - start)
        if left < 10:
            report["parts"][name] = {"status": "skipped", "why": f"out of time ({budget:.0f} s budget spent)"}
        else:
            report["parts"][name] = run_part(name, args, args.out, min(CAPS[name] * (3 if args.quick else 1), left))
        print(f"gpu_check: {name}: {report['parts'][name]['status']} "
              f"({report['parts'][name].get('s', 0):.0f} s)", flush=True)
    report["wall_s"] = time.perf_counter() - start
    text = table(report)
    save(args.out / "gpu_check.json", report)
    header = (f"# gpu_check on {card}\n\ntorch {torch.__version__}, {'--quick, ' if args.quick else ''}"
              f"{report['wall_s']:.0f} s of a {budget:.0f} s budget\n\n")
    (args.out / "gpu_check.md").write_text(header + text + "\n")
    print(header + text)
    return 1 if any(part["status"] == "failed" for part in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
