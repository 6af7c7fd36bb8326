"""scripts/slurm/*.sbatch run with bash against fake srun, scontrol, hostname, ray and python.

No Slurm and no Ray: the fakes record every call (tool, node, working directory, the environment the
scripts set, argv) in one log, and ray/python behave just enough for the scripts' logic to run. The
tests assert what each script started, on which node, in which order, and that Ray is stopped
whatever the sweep's outcome.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "slurm"
CLUSTER, ONE_GPU = SCRIPTS / "ray_cluster.sbatch", SCRIPTS / "one_gpu.sbatch"
NODES = ("node01", "node02", "node03")
JOB_ID = "4242"

# Fields and records are joined with ASCII unit/record separators, so any argv (even python -c code with
# newlines) reads back exactly. Fakes run concurrently (the workers): dd gathers the whole record and appends
# it in one write, where bash's printf would write line by line and interleave with another fake's record.
RECORD = r"""
rec=$(basename "$0")
for field in "${FAKE_NODE:-batch}" "$PWD" "${VIRTUAL_ENV:-}" "${RAY_ADDRESS:-}" "${RAY_OVERRIDE_RESOURCES:-}" \
    "${RAY_AUTH_MODE:-}" "${RAY_AUTH_TOKEN:-}" "$@"; do
    rec+=$'\x1f'$field
done
printf '%s\x1e' "$rec" | dd of="$FAKE_LOG" oflag=append conv=notrunc iflag=fullblock bs=1M status=none
"""
FAKES = {
    # Runs the command on the node named by -w, as srun would, and becomes it (exec), so a signal to the
    # step's pid reaches the command.
    "srun": r"""
node=
while [[ $1 == -* ]]; do
    if [[ $1 == -w ]]; then node=$2; shift; fi
    shift
done
FAKE_NODE=$node exec "$@"
""",
    "scontrol": r"""
[[ "$1 $2" == "show hostnames" ]] && printf '%s\n' $FAKE_NODES
""",
    # hostname --all-ip-addresses on nodeNN: an IPv6 address first, then 10.0.0.NN.
    "hostname": r"""
n=${FAKE_NODE//[!0-9]/}
echo "fd00::${n:-0} 10.0.0.$((10#${n:-0}))"
""",
    # ray start: a node joins (unless listed in FAKE_RAY_NEVER_JOINS) and blocks like --block until
    # signalled; it fails at once on the nodes in FAKE_RAY_FAILS_ON.
    "ray": r"""
if [[ $1 == start ]]; then
    [[ " ${FAKE_RAY_FAILS_ON:-} " == *" $FAKE_NODE "* ]] && { echo "fake ray: cannot start on $FAKE_NODE" >&2; exit 1; }
    [[ " ${FAKE_RAY_NEVER_JOINS:-} " == *" $FAKE_NODE "* ]] || touch "$FAKE_STATE/alive.$FAKE_NODE"
    echo $$ >>"$FAKE_STATE/blocking.pids"
    exec sleep 120 </dev/null >/dev/null 2>&1
fi
""",
    # python -c (the scripts' readiness check) prints the number of live Ray nodes; the sweep and its
    # --plan exit with FAKE_SWEEP_STATUS / FAKE_PLAN_STATUS, the sweep after FAKE_SWEEP_SECONDS, or with 143 at
    # SIGTERM, leaving sweep.sigterm.
    "python": r"""
if [[ $1 == -c ]]; then
    shopt -s nullglob
    alive=("$FAKE_STATE"/alive.*)
    echo "${#alive[@]}"
    exit 0
fi
[[ " $* " == *" --plan "* ]] && exit "${FAKE_PLAN_STATUS:-0}"
sleep "${FAKE_SWEEP_SECONDS:-0}" &
trap 'touch "$FAKE_STATE/sweep.sigterm"; kill $! 2>/dev/null; exit 143' TERM
wait $!
exit "${FAKE_SWEEP_STATUS:-0}"
""",
}


@dataclass(frozen=True)
class Call:
    tool: str
    node: str
    cwd: str
    venv: str
    ray_address: str
    ray_resources: str
    auth_mode: str
    auth_token: str
    args: tuple[str, ...]

    @property
    def line(self) -> str:
        return " ".join((self.tool, *self.args))


@dataclass
class Job:
    returncode: int
    stdout: str
    stderr: str
    calls: list[Call]
    blocking_pids: list[int]
    seconds: float


class Allocation:
    """A 3-node allocation (node01-03, 8 CPUs and 4 GPUs each) submitted from `submit`, with the fakes first on
    PATH."""

    def __init__(self, tmp_path: Path):
        self.bin, self.state, self.submit = tmp_path / "bin", tmp_path / "state", tmp_path / "submit"
        for d in (self.bin, self.state, self.submit):
            d.mkdir()
        self.log = self.state / "calls.log"
        for name, body in FAKES.items():
            path = self.bin / name
            path.write_text("#!/bin/bash\n" + RECORD + body)
            path.chmod(0o755)
        self.env = {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
            "FAKE_LOG": str(self.log), "FAKE_STATE": str(self.state), "FAKE_NODES": " ".join(NODES),
            "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NODELIST": "node[01-03]", "SLURM_JOB_NUM_NODES": "3",
            "SLURM_NNODES": "3", "SLURM_NTASKS": "3", "SLURM_SUBMIT_DIR": str(self.submit), "SLURMD_NODENAME": "node01",
            "SLURM_CPUS_PER_TASK": "8", "SLURM_CPUS_ON_NODE": "8", "SLURM_GPUS_ON_NODE": "4",
        }

    def start(self, script: Path, *args: str, **env: str) -> subprocess.Popen:
        # cwd is not the submit directory: the scripts must go there themselves, as sbatch's --chdir may differ.
        return subprocess.Popen(["bash", str(script), *args], cwd=self.state, env={**self.env, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def run(self, script: Path, *args: str, **env: str) -> Job:
        t0 = time.monotonic()
        proc = self.start(script, *args, **env)
        stdout, stderr = proc.communicate(timeout=60)
        return self.job(proc.returncode, stdout, stderr, time.monotonic() - t0)

    def job(self, returncode: int, stdout: str, stderr: str, seconds: float) -> Job:
        pids = self.state / "blocking.pids"
        return Job(returncode, stdout, stderr, self.calls(), [int(p) for p in pids.read_text().split()]
                   if pids.exists() else [], seconds)

    def calls(self) -> list[Call]:
        if not self.log.exists():
            return []
        text = self.log.read_text()
        records = [r.split("\x1f") for r in text.split("\x1e")[:-1]]
        assert all(len(r) >= 8 for r in records), repr(text)
        return [Call(*r[:8], tuple(r[8:])) for r in records]

    def venv(self, name: str = ".venv") -> Path:
        """A virtualenv whose activate, like older virtualenv's, reads a variable a batch job leaves unset."""
        venv = self.submit / name
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "activate").write_text(
            f'if [ -n "$_OLD_VIRTUAL_PATH" ]; then PATH=$_OLD_VIRTUAL_PATH; fi\n'
            f'_OLD_VIRTUAL_PATH=$PATH\nexport VIRTUAL_ENV={venv}\nexport PATH="$VIRTUAL_ENV/bin:$PATH"\n')
        return venv


@pytest.fixture
def alloc(tmp_path):
    return Allocation(tmp_path)


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; it only waits for a parent to reap it


def is_poll(call: Call) -> bool:
    return call.tool == "python" and call.args[:1] == ("-c",)


def srun_ray_start(node: str, *ray_args: str) -> list[str]:
    return [f"srun --nodes=1 --ntasks=1 -w {node} ray start {' '.join(ray_args)}", f"ray start {' '.join(ray_args)}"]


def head_start(port: int = 6379) -> list[str]:
    return srun_ray_start("node01", "--head", "--node-ip-address=10.0.0.1", f"--port={port}", "--num-cpus=8",
                          "--num-gpus=4", "--disable-usage-stats", "--block")


def worker_start(node: str, port: int = 6379) -> list[str]:
    return srun_ray_start(node, f"--address=10.0.0.1:{port}", "--num-cpus=8", "--num-gpus=4",
                          "--disable-usage-stats", "--block")


def assert_cluster_sequence(alloc: Allocation, job: Job, sweep_args: list[str], port: int = 6379) -> None:
    """scontrol, the head's address, the head, its readiness, the workers (in any order between themselves),
    readiness of all three, the sweep on the head with RAY_ADDRESS, then `ray stop`."""
    lines = [c.line for c in job.calls if not is_poll(c)]
    assert lines[:3] == ["scontrol show hostnames node[01-03]", "srun --nodes=1 --ntasks=1 -w node01 hostname "
                         "--all-ip-addresses", "hostname --all-ip-addresses"]
    assert lines[3:5] == head_start(port)
    assert sorted(lines[5:9]) == sorted(worker_start("node02", port) + worker_start("node03", port))
    assert lines[9:] == [" ".join(["python -m tune_app.search", *sweep_args]), "ray stop"]

    # Where each command ran: srun's -w is honoured.
    where = sorted((c.line, c.node) for c in job.calls if c.tool in ("hostname", "ray") and c.args[0] != "stop")
    assert where == sorted([("hostname --all-ip-addresses", "node01"), (head_start(port)[1], "node01"),
                            (worker_start("node02", port)[1], "node02"), (worker_start("node03", port)[1], "node03")])
    sweep, stop = [c for c in job.calls if not is_poll(c)][9:]
    assert (sweep.node, sweep.cwd, sweep.ray_address) == ("batch", str(alloc.submit), f"10.0.0.1:{port}")
    assert stop.node == "batch"  # the script's own node, the head

    # The readiness check asks the head; one poll came before any worker started, and the last one came after
    # both had (the sweep waits for the whole cluster).
    polls = [i for i, c in enumerate(job.calls) if is_poll(c)]
    assert {job.calls[i].args[2:] for i in polls} == {(f"10.0.0.1:{port}",)}
    assert "ray.nodes()" in job.calls[polls[0]].args[1]
    starts = [i for i, c in enumerate(job.calls) if c.tool == "ray" and c.args[0] == "start"]
    sweep_at = next(i for i, c in enumerate(job.calls) if c.line.startswith("python -m"))
    assert polls[0] < starts[1] and starts[-1] < polls[-1] < sweep_at
    assert len(job.blocking_pids) == 3 and not any(map(is_running, job.blocking_pids))


def cluster_defaults(alloc: Allocation, space: str = "cifar_vgg6") -> list[str]:
    return ["--space", space, "--name", f"{space}-{JOB_ID}", "--address", "auto", "--storage-path",
            f"{alloc.submit}/runs", "--data-dir", f"{alloc.submit}/data"]


@pytest.mark.parametrize("script", [CLUSTER, ONE_GPU], ids=lambda p: p.name)
def test_script_parses(script):
    run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert (run.returncode, run.stderr) == (0, "")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", [CLUSTER, ONE_GPU], ids=lambda p: p.name)
def test_shellcheck_finds_nothing(script):
    run = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (0, "")


def test_cluster_starts_head_then_workers_then_the_sweep_and_stops_ray(alloc):
    job = alloc.run(CLUSTER, "--gpus-per-trial", "0.25", "--set", "epochs=2", RAY_HEAD_PORT="6380")
    assert job.returncode == 0, job.stderr
    assert_cluster_sequence(alloc, job, [*cluster_defaults(alloc), "--gpus-per-trial", "0.25", "--set", "epochs=2"],
                            port=6380)
    assert "Ray head on node01 (10.0.0.1:6380), workers on node02 node03, 8 CPUs and 4 GPUs each" in job.stdout
    assert "tune_app: stopping Ray on node01 node02 node03" in job.stderr


def test_cluster_gives_every_ray_process_one_auth_token_of_its_own(alloc):
    """`ray start --address` and ray.init(address=HOST:PORT) send a token only when RAY_AUTH_MODE says so, while
    the head turns token auth on whenever ~/.ray/auth_token exists: without this, workers would never join."""
    tokens = set()
    for _ in range(2):
        alloc.log.unlink(missing_ok=True)
        job = alloc.run(CLUSTER)
        assert job.returncode == 0, job.stderr
        ray_processes = [c for c in job.calls if c.tool in ("ray", "python")]
        assert len(ray_processes) >= 6 and {c.auth_mode for c in ray_processes} == {"token"}
        (token,) = {c.auth_token for c in ray_processes}
        assert re.fullmatch("[0-9a-f]{64}", token)
        tokens.add(token)
    assert len(tokens) == 2  # a new one per job

    alloc.log.unlink()
    job = alloc.run(CLUSTER, RAY_AUTH_MODE="disabled")
    assert job.returncode == 0, job.stderr
    assert {(c.auth_mode, c.auth_token) for c in job.calls if c.tool in ("ray", "python")} == {("disabled", "")}


def test_cluster_failed_sweep_still_stops_ray_and_fails_the_job(alloc):
    job = alloc.run(CLUSTER, "--space", "digits", FAKE_SWEEP_STATUS="3")
    assert job.returncode == 3
    assert_cluster_sequence(alloc, job, [*cluster_defaults(alloc, "digits")[2:], "--space", "digits"])
    assert "tune_app: the sweep exited with status 3" in job.stderr


@pytest.mark.parametrize(("never_joins", "message", "started"), [
    ("node02 node03", "tune_app: only 1 of 3 Ray nodes joined within 3s (RAY_WAIT_TIMEOUT); the Ray output above "
     "tells why the others did not", NODES),
    ("node01", "tune_app: the Ray head on node01 (10.0.0.1:6379) did not answer within 3s (RAY_WAIT_TIMEOUT); its "
     "output is above", ("node01",)),
], ids=["workers", "head"])
def test_cluster_gives_up_when_nodes_never_join(alloc, never_joins, message, started):
    job = alloc.run(CLUSTER, FAKE_RAY_NEVER_JOINS=never_joins, RAY_WAIT_TIMEOUT="3")
    assert job.returncode == 1
    assert job.stderr.strip().splitlines()[-2:] == [message, "tune_app: stopping Ray on node01 node02 node03"]
    lines = [c.line for c in job.calls if not is_poll(c)]
    assert sorted(c.node for c in job.calls if c.tool == "ray" and c.args[0] == "start") == list(started)
    assert lines[-1] == "ray stop" and not [line for line in lines if line.startswith("python -m")]
    assert len(job.blocking_pids) == len(started) and not any(map(is_running, job.blocking_pids))
    assert 3 <= job.seconds < 20


def test_cluster_fails_fast_when_the_head_dies(alloc):
    job = alloc.run(CLUSTER, FAKE_RAY_FAILS_ON="node01", RAY_WAIT_TIMEOUT="120")
    assert job.returncode == 1
    assert "tune_app: Ray on node01 exited before the cluster was up (its output is above)" in job.stderr
    assert "fake ray: cannot start on node01" in job.stderr
    assert [c.line for c in job.calls if not is_poll(c)][3:] == [*head_start(), "ray stop"]  # no worker, no sweep
    assert job.seconds < 20


def test_cluster_sigterm_stops_ray_and_exits_143(alloc):
    """Slurm's scancel and time limit signal every process of the job."""
    proc = alloc.start(CLUSTER, FAKE_SWEEP_SECONDS="60")
    deadline = time.monotonic() + 30
    while not any(c.line.startswith("python -m") for c in alloc.calls()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143
    lines = [c.line for c in alloc.calls() if not is_poll(c)]
    assert lines[-2:] == [" ".join(["python -m tune_app.search", *cluster_defaults(alloc)]), "ray stop"]


@pytest.mark.parametrize("script", [CLUSTER, ONE_GPU], ids=lambda p: p.name)
def test_sigterm_to_the_batch_shell_alone_reaches_the_sweep_which_ends_the_job(alloc, script):
    """`sbatch --signal=B:TERM@180` (before the time limit) and `scancel --batch` signal the script's shell only:
    the script passes SIGTERM on to the sweep at once, waits for it to stop, then stops Ray."""
    proc = alloc.start(script, FAKE_SWEEP_SECONDS="60")
    deadline = time.monotonic() + 30
    while not any(c.line.startswith("python -m") and "--plan" not in c.args for c in alloc.calls()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    time.sleep(0.3)  # the fake sweep sets its trap
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert (alloc.state / "sweep.sigterm").exists()
    lines = [c.line for c in alloc.calls() if not is_poll(c)]
    sweep = max(i for i, line in enumerate(lines) if line.startswith("python -m tune_app.search"))
    assert "--plan" not in lines[sweep] and lines[sweep + 1:] == (["ray stop"] if script == CLUSTER else [])


@pytest.mark.parametrize(("script", "args", "env", "expected"), [
    (CLUSTER, [], {"SPACE": "digits"}, ["--space", "digits", "--name", "digits-4242", "--address", "auto"]),
    (CLUSTER, ["--space=mlp_lab"], {}, ["--name", "mlp_lab-4242", "--address", "auto"]),
    (CLUSTER, ["--name", "mine"], {}, ["--space", "cifar_vgg6", "--address", "auto"]),
    (CLUSTER, ["--resume", "/shared/runs/cifar_vgg6-17"], {"SPACE": "digits"}, ["--address", "auto"]),
    (ONE_GPU, ["--space", "digits"], {}, ["--name", "digits-4242", "--cpus-per-trial", "1", "--gpus-per-trial", "0"]),
    (ONE_GPU, ["--resume", "/shared/runs/mlp_lab-17"], {}, []),
], ids=["space-env", "space-arg", "name-arg", "resume", "1gpu-space-arg", "1gpu-resume"])
def test_defaults_give_way_to_the_arguments(alloc, script, args, env, expected):
    """A resumed sweep keeps its own space, name and resources: the scripts add none of them."""
    job = alloc.run(script, *args, **env)
    assert job.returncode == 0, job.stderr
    sweep = [c.args for c in job.calls if c.line.startswith("python -m")][-1]
    assert list(sweep) == ["-m", "tune_app.search", *expected, "--storage-path", f"{alloc.submit}/runs",
                           "--data-dir", f"{alloc.submit}/data", *args]


def test_cluster_activates_the_submit_dirs_venv_on_every_node(alloc):
    venv = alloc.venv()
    job = alloc.run(CLUSTER)
    assert job.returncode == 0, job.stderr
    ray_and_python = [c for c in job.calls if c.tool in ("ray", "python")]
    assert len(ray_and_python) >= 5 and {c.venv for c in ray_and_python} == {str(venv)}
    assert {c.node for c in ray_and_python if c.args[0] == "start"} == set(NODES)


@pytest.mark.parametrize("script", [CLUSTER, ONE_GPU], ids=lambda p: p.name)
def test_tune_app_env_chooses_the_venv(alloc, script):
    alloc.venv()
    other = alloc.venv("envs/other")
    job = alloc.run(script, TUNE_APP_ENV=str(other))
    assert job.returncode == 0, job.stderr
    assert {c.venv for c in job.calls if c.tool == "python"} == {str(other)}

    alloc.log.unlink()
    job = alloc.run(script, TUNE_APP_ENV="")  # empty: no activation, whatever ./.venv holds
    assert job.returncode == 0, job.stderr
    assert {c.venv for c in job.calls if c.tool == "python"} == {""}

    alloc.log.unlink()
    job = alloc.run(script, TUNE_APP_ENV=str(alloc.submit / "missing"))
    assert job.returncode == 2
    assert job.stderr.strip() == f"tune_app: TUNE_APP_ENV={alloc.submit}/missing has no bin/activate"
    assert job.calls == []


@pytest.mark.parametrize("script", [CLUSTER, ONE_GPU], ids=lambda p: p.name)
def test_outside_slurm_the_scripts_refuse_to_run(alloc, script):
    env = {k: v for k, v in alloc.env.items() if not k.startswith("SLURM")}
    run = subprocess.run(["bash", str(script)], cwd=alloc.submit, env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 1
    assert run.stderr.strip().endswith("SLURM_JOB_ID: submit this script with sbatch")
    assert alloc.calls() == []


def one_gpu_sweep(alloc: Allocation, *args: str) -> list[str]:
    return ["python", "-m", "tune_app.search", "--space", "mlp_lab", "--name", f"mlp_lab-{JOB_ID}", "--cpus-per-trial",
            "1", "--gpus-per-trial", "0", "--storage-path", f"{alloc.submit}/runs", "--data-dir",
            f"{alloc.submit}/data", *args]


def test_one_gpu_prints_the_plan_then_runs_the_sweep_on_a_ray_sized_to_the_job(alloc):
    job = alloc.run(ONE_GPU, "--set", "dataset=cifar10", SLURM_GPUS_ON_NODE="1")
    assert job.returncode == 0, job.stderr
    sweep = one_gpu_sweep(alloc, "--set", "dataset=cifar10")
    assert [[c.tool, *c.args] for c in job.calls] == [[*sweep, "--plan"], sweep]
    assert {(c.node, c.cwd) for c in job.calls} == {("batch", str(alloc.submit))}
    assert [json.loads(c.ray_resources) for c in job.calls] == [{"CPU": 8, "GPU": 1}] * 2
    assert {c.ray_address for c in job.calls} == {"local"}  # a Ray of its own, whatever else runs on the node
    assert job.stdout.splitlines() == [
        f"tune_app: job {JOB_ID} on node01: CPUs 8, GPUs 1",
        f"tune_app: estimates first: {' '.join(sweep)} --plan",
        f"tune_app: running: {' '.join(sweep)}"]


def test_one_gpu_stops_at_a_failed_plan(alloc):
    job = alloc.run(ONE_GPU, "--set", "lr=-1", FAKE_PLAN_STATUS="2")
    assert job.returncode == 2
    assert [[c.tool, *c.args] for c in job.calls] == [[*one_gpu_sweep(alloc, "--set", "lr=-1"), "--plan"]]


def test_one_gpu_a_failed_sweep_fails_the_job(alloc):
    job = alloc.run(ONE_GPU, FAKE_SWEEP_STATUS="1")
    assert job.returncode == 1
    assert [[c.tool, *c.args] for c in job.calls] == [[*one_gpu_sweep(alloc), "--plan"], one_gpu_sweep(alloc)]
    assert job.stderr.strip() == "tune_app: the sweep exited with status 1"


@pytest.mark.parametrize("args", [["--plan"], ["--resume", "/shared/runs/mlp_lab-17"]], ids=["plan", "resume"])
def test_one_gpu_runs_once_for_a_plan_or_a_resume(alloc, args):
    job = alloc.run(ONE_GPU, *args)
    assert job.returncode == 0, job.stderr
    assert len(job.calls) == 1 and job.calls[0].args[-len(args):] == tuple(args)
    assert "estimates first" not in job.stdout
