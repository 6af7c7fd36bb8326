"""A real Slurm on this machine for the tests: munged, a MariaDB server and slurmdbd for accounting (``sacct``),
slurmctld and two slurmd (nodes n1 and n2, both on localhost, each on a port of its own), all under one temporary
folder and stopped at the end.

It installs nothing: Debian's ``slurm-wlm``, ``slurmdbd``, ``munge`` and ``mariadb-server`` must be there
(``.ci/run`` installs them). It runs as root, as CI does: the daemons run as root here and jobs run as the
submitting user. Process tracking is ``proctrack/linuxproc`` (by parent process, no cgroups).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db", "mariadb", "sbatch",
           "scontrol", "scancel", "sinfo", "squeue", "sacct")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}

CONF = """\
ClusterName=tuneapp
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_ports[0]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={root}/munge.sock
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
KillWait=30
MpiDefault=none
{nodes}
PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""
DBD_CONF = """\
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StorageLoc=tune_app_acct
PidFile={root}/slurmdbd.pid
LogFile={root}/log/slurmdbd.log
"""
NODE = "NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} RealMemory=4000 State=UNKNOWN"


def tool(name: str) -> str | None:
    """A Slurm or munge program: on PATH, or in /usr/sbin (Debian's place for the daemons) when PATH lacks it."""
    return shutil.which(name) or (str(Path("/usr/sbin", name)) if Path("/usr/sbin", name).exists() else None)


def missing() -> list[str]:
    return [name for name in DAEMONS if tool(name) is None]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Slurm:
    """munged, slurmctld and one slurmd per node, configured in ``root``."""

    def __init__(self, root: Path, nodes=("n1", "n2"), cpus: int = 2):
        self.root, self.nodes = root, nodes
        for sub in ("state", "log", *(f"spool/{n}" for n in nodes)):
            (root / sub).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        self.db_port, self.dbd_port, ctld_port, *node_ports = free_ports(3 + len(nodes))
        lines = [NODE.format(name=n, host=host, port=p, cpus=cpus) for n, p in zip(nodes, node_ports)]
        self.conf = root / "slurm.conf"
        self.conf.write_text(CONF.format(host=host, ctld_port=ctld_port, node_ports=node_ports, root=root,
                                         dbd_port=self.dbd_port, nodes="\n".join(lines), names=",".join(nodes)))
        dbd_conf = root / "slurmdbd.conf"  # slurmdbd reads it beside SLURM_CONF; it must be private
        dbd_conf.write_text(DBD_CONF.format(root=root, dbd_port=self.dbd_port, db_port=self.db_port))
        dbd_conf.chmod(0o600)
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._daemon("munged", "--force", f"--socket={self.root}/munge.sock", f"--key-file={key}",
                     f"--pid-file={self.root}/munged.pid", f"--log-file={self.root}/log/munged.log",
                     f"--seed-file={self.root}/munge.seed")
        self._database()
        self._daemon("slurmdbd")
        self._wait_for_port(self.dbd_port, "slurmdbd")
        self._daemon("slurmctld", "-f", str(self.conf))
        for node in self.nodes:
            self._daemon("slurmd", "-f", str(self.conf), "-N", node)
        deadline = time.time() + 60
        while time.time() < deadline:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout
            states = dict(line.split() for line in out.splitlines() if line.strip())
            if len(states) == len(self.nodes) and all(s == "idle" for s in states.values()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm's nodes did not come up: {out!r}\n{self.logs()}")

    def _database(self) -> None:
        """A MariaDB server of the test's own (its data, socket and port under ``root``) with a ``slurm`` user."""
        db = self.root / "db"
        self._daemon("mariadb-install-db", "--user=root", f"--datadir={db}", "--auth-root-authentication-method=normal",
                     "--skip-test-db")
        subprocess.Popen([tool("mariadbd"), "--user=root", f"--datadir={db}", f"--socket={self.root}/mysql.sock",
                          f"--port={self.db_port}", "--bind-address=127.0.0.1", f"--pid-file={self.root}/mariadb.pid",
                          f"--log-error={self.root}/log/mariadb.log", "--skip-name-resolve"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._wait_for_port(self.db_port, "mariadbd")
        self._daemon("mariadb", "-S", f"{self.root}/mysql.sock", "-u", "root", "-e",
                     "CREATE USER 'slurm'@'127.0.0.1'; GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';")

    def _wait_for_port(self, port: int, what: str) -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not listen on {port}\n{self.logs()}")

    def _daemon(self, name: str, *args: str) -> None:
        done = subprocess.run([tool(name), *args], env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"{name} did not start ({done.returncode}): {done.stderr}\n{self.logs()}")

    def stop(self) -> None:
        """Cancels every job, then stops the daemons (slurmd first, munged last) and waits for them to exit."""
        self.run("scancel", "--user", "root", check=False)
        deadline = time.time() + 60
        while self.run("squeue", "-h", check=False).stdout.strip() and time.time() < deadline:
            time.sleep(1)
        for group in ([self.root / f"slurmd-{n}.pid" for n in self.nodes] + [self.root / "slurmctld.pid"],
                      [self.root / "slurmdbd.pid"], [self.root / "mariadb.pid", self.root / "munged.pid"]):
            pids = []
            for pid_file in group:
                try:
                    pids.append(int(pid_file.read_text().split()[0]))
                    os.kill(pids[-1], signal.SIGTERM)
                except (OSError, ValueError, IndexError):
                    continue
            deadline = time.time() + 10
            while (alive := [pid for pid in pids if _alive(pid)]) and time.time() < deadline:
                time.sleep(0.1)
            for pid in alive:
                os.kill(pid, signal.SIGKILL)

    def run(self, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, env=kw.pop("env", self.env), capture_output=True, text=True, timeout=60, **kw)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
        return done

    def sbatch(self, *argv: str, cwd: Path, env: dict) -> str:
        """Submits a batch job from ``cwd`` with ``env`` (SLURM_CONF added); returns its id."""
        out = self.run("sbatch", "--parsable", *argv, cwd=cwd, env={**env, "SLURM_CONF": str(self.conf)}).stdout
        return out.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, ExitCode, NodeList, StdOut, ...)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def accounting(self, job_id: str) -> dict[str, str]:
        """The job's record in Slurm's accounting database, as ``sacct`` prints it (State, ExitCode, NodeList,
        Elapsed); empty until slurmctld has sent it to slurmdbd."""
        fields = ("State", "ExitCode", "NodeList", "Elapsed")
        out = self.run("sacct", "-X", "-n", "-P", "-j", job_id, "-o", ",".join(fields)).stdout.strip()
        return dict(zip(fields, out.splitlines()[0].split("|"))) if out else {}

    def state(self, job_id: str) -> str:
        return self.job(job_id)["JobState"]

    def wait(self, job_id: str, timeout: float) -> dict[str, str]:
        """Until the job has ended (or RuntimeError with its output at the timeout); returns its fields."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.job(job_id)
            if job["JobState"] in ENDED:
                return job
            time.sleep(1)
        job = self.job(job_id)
        raise RuntimeError(f"job {job_id} still {job['JobState']} after {timeout:.0f}s; its output:\n"
                           f"{Path(job['StdOut']).read_text()[-4000:] if Path(job['StdOut']).exists() else ''}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((self.root / "log").glob("*.log")))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def job_processes(job_id: str) -> list[str]:
    """Live processes that carry the job's SLURM_JOB_ID in their environment (what the job started, on any node
    of this machine), as 'pid command'."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"SLURM_JOB_ID={job_id}".encode() not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name} {command[:200]}")
        except OSError:
            continue
    return found
