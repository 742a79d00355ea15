"""A real two-node Ray cluster on 127.0.0.1 started with `ray start`, ended by pid."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from helpers import REPO_ROOT

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_env() -> dict[str, str]:
    """The same explicit auth mode for every command (spec/ray.md 5.1), our venv first."""
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "disabled"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class LocalCluster:
    temp_dir: str
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    head_raylets: set[int] = field(default_factory=set)
    worker_raylets: set[int] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def ray(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([str(VENV_BIN / "ray"), *args], env=cluster_env(), text=True,
                              capture_output=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr

    def start_head(self, num_cpus: int = 2) -> None:
        self.ray("start", "--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1",
                 f"--num-cpus={num_cpus}", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={self.dashboard_port}", "--object-store-memory=200000000",
                 # the agent's default port (52365) belongs to any other Ray on this machine,
                 # e.g. the tests' own ray.init: without its agent the head takes no jobs
                 f"--dashboard-agent-listen-port={free_port()}",
                 f"--temp-dir={self.temp_dir}", "--disable-usage-stats")
        self.head_raylets = self.raylet_pids()

    def add_worker_node(self, num_cpus: int = 2) -> None:
        self.ray("start", f"--address={self.address}", "--node-ip-address=127.0.0.1",
                 f"--num-cpus={num_cpus}", "--object-store-memory=200000000",
                 f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats")
        self.worker_raylets = self.raylet_pids() - self.head_raylets

    def ours(self, cmdline: str) -> bool:
        """Whether a command line belongs to this cluster: it names our temp dir or our GCS
        port (every raylet, agent and log monitor of our nodes is started with
        `--gcs-address=<ip>:<our port>`, where `ray start` may have turned 127.0.0.1 into this
        machine's outward address). Another suite's Ray here has its own port and dir."""
        return self.temp_dir in cmdline or bool(
            re.search(rf"--gcs[-_]address=\S*:{self.gcs_port}(\s|$)", cmdline))

    def raylet_pids(self) -> set[int]:
        """The raylets of this cluster only: never every raylet on the machine."""
        pids = set()
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if cmdline and cmdline[0].endswith("/raylet") and self.ours(" ".join(cmdline)):
                pids.add(proc.pid)
        return pids

    def kill_worker_node(self) -> None:
        assert self.worker_raylets, "no raylet of this cluster's worker node was found"
        for pid in self.worker_raylets:
            os.kill(pid, signal.SIGKILL)

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: its command line names our temp dir or GCS port, or
        it descends from one that does (workers, agents)."""
        found = {}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if self.ours(cmdline) or proc.pid in self.head_raylets | self.worker_raylets:
                found[proc.pid] = proc
                for child in _children(proc):
                    found[child.pid] = child
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        end_processes(self.processes())


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Processes whose command line contains `text` (e.g. our own Ray temp dir)."""
    return [proc for proc in psutil.process_iter(["pid", "cmdline"])
            if proc.pid != os.getpid() and text in " ".join(proc.info["cmdline"] or [])]


def end_processes(procs: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL what is left after 10 s: only the processes given."""
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def short_temp_dir() -> str:
    # Ray's unix socket paths must stay under ~107 characters: keep the root short.
    return tempfile.mkdtemp(prefix="rt", dir="/tmp")


def wait_for(predicate, timeout: float, interval: float = 1.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def kill_driver_when(job_args: list[str], done, what: str, timeout: float = 300) -> None:
    """Run `python <job_args>` from the repo root with a local Ray of its own, wait until
    `done()` (or the driver exits), then SIGKILL its process group: a driver lost mid-run (a
    laptop closed, a cluster torn down). Ends the Ray agents the killed driver leaves behind
    (spec/ray.md 1), by pid."""
    ray_tmp = short_temp_dir()
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, *job_args], cwd=REPO_ROOT, env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: done() or driver.poll() is not None, timeout=timeout, interval=0.5,
                 what=what)
    finally:
        # its Ray's processes with it (raylet, the Train controller and workers): left alone,
        # a worker would go on to write the next checkpoint after the "kill"
        left = _children(psutil.Process(driver.pid)) if driver.poll() is None else []
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        for proc in left:
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(left, timeout=10)
        driver.wait(timeout=30)
        end_processes(processes_mentioning(ray_tmp))
