"""SIGTERM to a sweep's driver (tune_app.search.runner.TermAsInterrupt) without Ray: the driver exits with 143 and
the resume line within TUNE_APP_TERM_GRACE_S even when its main thread is stuck in C code, where Python's own signal
handler cannot run (as in a call into a Ray that a batch system is shutting down). tests/test_resume.py covers the
graceful path through Ray Tune, tests/test_slurm_real.py SIGTERM from Slurm's scancel and time limit."""
import os
import signal
import subprocess
import sys
import time

STUCK = """
import hashlib, sys
from tune_app.search.runner import TermAsInterrupt

with TermAsInterrupt("continue with: python -m tune_app.search --resume runs/x") as term:
    print("armed", flush=True)
    hashlib.pbkdf2_hmac("sha256", b"x", b"y", 10**9)  # minutes in C, holding the main thread
print("returned", term.received)
"""


def test_a_driver_stuck_in_c_exits_143_with_the_resume_line_after_the_grace():
    env = {**os.environ, "TUNE_APP_TERM_GRACE_S": "1"}
    proc = subprocess.Popen([sys.executable, "-c", STUCK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline() == "armed\n"
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # Slurm's, then the job script's: still one stop, within the grace
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert 1.0 <= time.monotonic() - sent < 30
    assert err.strip().splitlines() == ["tune_app: stopped by SIGTERM; Ray did not stop in time; continue with: "
                                        "python -m tune_app.search --resume runs/x"]
    assert "returned" not in out


def test_after_the_context_sigterm_is_the_default_again_and_no_thread_is_left():
    code = """
import os, signal, threading
from tune_app.search.runner import TermAsInterrupt

with TermAsInterrupt("x"):
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
threading.Event().wait(0.5)
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, threading.active_count(), signal.set_wakeup_fd(-1))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["True", "1", "-1"], run.stderr


def test_sigterms_after_the_stop_began_cannot_turn_143_into_a_kill():
    """The stop can end in well under a second, before the job script passes Slurm's signal on; that late SIGTERM,
    or a batch system's repeat, lands while the driver exits (when Python resets its handlers to the default)."""
    code = """
import os, signal, sys, time
from tune_app.search.runner import TermAsInterrupt

with TermAsInterrupt("x") as term:
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except KeyboardInterrupt:  # the stop, as Ray Tune's SIGINT handler would take it
        pass
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.2)
print("stopped", term.received, flush=True)
sys.exit(143)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (143, "stopped True\n"), run.stderr
