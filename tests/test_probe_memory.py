"""--plan's probes reuse their Ray workers from one wave to the next (tune_app.cost.estimate.probe_all); each probe
first resets its worker's peak memory, so that a probe reports its own peak, not the peak of the one before."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import resource
from tune_app.cost.estimate import reset_peak_memory

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # as a trainable reports it on a CPU

block = bytearray(400 * 2**20)  # the probe before: 400 MB touched, then freed
for i in range(0, len(block), 4096):
    block[i] = 1
del block
before = peak_mb()
reset_peak_memory()
after = peak_mb()
small = bytearray(50 * 2**20)  # this probe: 50 MB
for i in range(0, len(small), 4096):
    small[i] = 1
print(round(before), round(after), round(peak_mb()))
"""


def test_a_reused_workers_peak_memory_starts_again_from_what_it_holds():
    # Linux's ru_maxrss never falls below the peak of the process image a program was exec'd from: a child forked
    # from pytest itself would start at pytest's peak. A shell in between (as the raylet is for Ray's workers)
    # keeps that floor small.
    run = subprocess.run(["/bin/sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, CODE], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    before, after, probe = map(int, run.stdout.split())
    assert before > 400 and after < before - 300  # the first probe's 400 MB no longer count
    assert after + 25 <= probe < after + 100  # the second probe's own 50 MB do (less what the allocator reuses)
