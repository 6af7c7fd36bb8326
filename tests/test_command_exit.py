"""A command's process ends through tune_app.command.exit_with: its exit code, what its threads and exit handlers
still had to do, and everything it printed, without Python's module teardown."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import atexit, sys, threading, time
from tune_app.command import exit_with

def late():
    time.sleep(0.3)
    print("thread done", flush=False)

threading.Thread(target=late).start()
atexit.register(lambda: print("exit handler ran", file=sys.stderr))
print("printed, unflushed", end="\\n", flush=False)
exit_with(int(sys.argv[1]) if sys.argv[1] != "None" else None)
"""


def test_exit_with_waits_for_threads_runs_exit_handlers_flushes_and_keeps_the_code():
    for given, code in (("3", 3), ("0", 0), ("143", 143), ("None", 0)):
        run = subprocess.run([sys.executable, "-c", CODE, given], capture_output=True, text=True, timeout=60,
                             cwd=ROOT)
        assert run.returncode == code, run.stderr
        assert run.stdout.splitlines() == ["printed, unflushed", "thread done"]
        assert run.stderr.strip() == "exit handler ran"


def test_a_command_exits_with_its_code_through_it():
    run = subprocess.run([sys.executable, "-m", "tune_app.search", "--space", "no_such_space"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "no_such_space" in run.stderr, run.stderr
