"""A throwaway single-node Slurm cluster on this machine, for the tests marked ``cluster`` (issue 28).

    python tools/local_slurm.py -- python -m pytest -m cluster tests/cluster     # make cluster-test
    python tools/local_slurm.py --keep-open                                      # try it by hand

It starts ``munged``, ``slurmctld`` and ``slurmd`` (Debian's ``munge`` and ``slurm-wlm`` packages,
installed with apt-get when missing and we are root) with every file in a fresh temporary folder:
``slurm.conf`` (select/cons_tres, proctrack/linuxproc, task/none, one node with the cores and memory
``slurmd -C`` reports), its own munge key and socket, its own ports, state and logs. It waits until
``sinfo`` shows the node idle, runs the command with ``SLURM_CONF`` pointing at that file, and stops the
three daemons by the PIDs it started, whatever happened, then removes the folder. It never reads or
touches another Slurm on the machine: no system config, no system munge socket, no default ports.

Without root, apt-get or the packages it prints one line saying why and exits 0 (skipped), so a
machine that cannot host the cluster does not fail CI; the tests marked ``cluster`` skip themselves
when ``SLURM_CONF`` does not name a running cluster.

There is no accounting daemon (slurmdbd needs a database server), so ``sacct`` has nothing to read; the
cluster writes its job-completion log (``jobcomp/filetxt``) instead, and ``BENCH_SLURM_JOBCOMP`` names it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
NODE = "benchnode"


def why_not() -> str | None:
    """Why this machine cannot host the test cluster (None: it can, after installing what is missing)."""
    if sys.platform != "linux":
        return f"the local Slurm cluster needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd starts jobs as their user)"
    if all(shutil.which(d) or Path(f"/usr/sbin/{d}").exists() for d in DAEMONS):
        return None
    if not shutil.which("apt-get"):
        return f"{', '.join(DAEMONS)} are not installed and there is no apt-get to install {' '.join(PACKAGES)}"
    return None


def install() -> str | None:
    """apt-get install the packages when a daemon is missing; the reason when that failed."""
    if all(shutil.which(d) or Path(f"/usr/sbin/{d}").exists() for d in DAEMONS):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode:
            return f"`{' '.join(cmd)}` failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}"
    return None


def _daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_resources() -> tuple[int, int]:
    """(CPUs, RealMemory in MB) as ``slurmd -C`` reports them, memory with 10 % left to the system."""
    out = subprocess.run([_daemon("slurmd"), "-C"], capture_output=True, text=True, timeout=60).stdout
    fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
    return int(fields.get("CPUs", os.cpu_count() or 1)), int(int(fields.get("RealMemory", 1024)) * 0.9)


def write_config(folder: Path) -> Path:
    cpus, memory = node_resources()
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    text = f"""# A throwaway single-node cluster for bench's tests (tools/local_slurm.py); every path is in {folder}.
ClusterName=benchtest
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.sock
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={folder}/jobcomp.txt
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
NodeName={NODE} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
    path = folder / "slurm.conf"
    path.write_text(text)
    return path


@contextmanager
def local_cluster(timeout_s: float = 90.0):
    """Start the cluster; yield (slurm.conf path, environment for its clients); stop it by PID on exit."""
    folder = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    folder.chmod(0o700)
    procs: list[subprocess.Popen] = []
    try:
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        conf = write_config(folder)
        env = {**os.environ, "SLURM_CONF": str(conf), "BENCH_SLURM_JOBCOMP": str(folder / "jobcomp.txt")}
        procs.append(_start([_daemon("munged"), "--foreground", "--force", f"--key-file={key}",
                             f"--socket={folder}/munge.sock", f"--pid-file={folder}/munged.pid",
                             f"--log-file={folder}/munged.log", f"--seed-file={folder}/munge.seed"], folder, env))
        _wait(lambda: (folder / "munge.sock").exists(), timeout_s, "munged's socket", folder)
        procs.append(_start([_daemon("slurmctld"), "-D", "-f", str(conf)], folder, env))
        procs.append(_start([_daemon("slurmd"), "-D", "-f", str(conf), "-N", NODE], folder, env))
        _wait(lambda: _node_state(env) == "idle", timeout_s, "the node to be idle (sinfo)", folder)
        yield conf, env
    finally:
        for proc in reversed(procs):  # slurmd, slurmctld, munged: by the PIDs started here
            _stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


def _start(cmd: list[str], folder: Path, env: dict) -> subprocess.Popen:
    log = open(folder / f"{Path(cmd[0]).name}.stdout", "wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _node_state(env: dict) -> str:
    done = subprocess.run(["sinfo", "-h", "-n", NODE, "-o", "%T"], env=env, capture_output=True, text=True,
                          timeout=30)
    return done.stdout.strip()


def _wait(ready, timeout_s: float, what: str, folder: Path) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if ready():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-1500:] for p in sorted(folder.glob("*.log")))
    raise RuntimeError(f"the local Slurm cluster did not start: waited {timeout_s:.0f} s for {what}.\n{logs}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep-open", action="store_true", help="start it, print SLURM_CONF, wait for Ctrl-C")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...: run with SLURM_CONF set")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    reason = why_not() or install()
    if reason:
        print(f"local Slurm cluster skipped: {reason}.")
        return 0
    start = time.monotonic()
    with local_cluster() as (conf, env):
        print(f"local Slurm cluster up in {time.monotonic() - start:.1f} s: SLURM_CONF={conf}", flush=True)
        if args.keep_open:
            try:
                signal.pause()
            except KeyboardInterrupt:
                return 0
        code = subprocess.run(command, env=env).returncode if command else 0
    print(f"local Slurm cluster stopped ({time.monotonic() - start:.1f} s in all)")
    return code


if __name__ == "__main__":
    sys.exit(main())
