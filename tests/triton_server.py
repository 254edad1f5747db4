"""Start and stop the real Triton Inference Server set up by scripts/setup_triton.sh.

Everything the bundled tritonserver (nvidia-pytriton's copy, 2.51, CPU) needs is here: PATH and
LD_LIBRARY_PATH from `.triton/paths.json`, loopback addresses, free ports, a wait for READY and a
bounded shutdown. Used by tests/test_triton.py and bench/triton_load.py.

    with TritonServer(repo, backend_dir=...) as server:
        server.http_url   # "127.0.0.1:PORT"
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRITON_DIR = Path(os.environ.get("EXITC_TRITON_DIR", ROOT / ".triton"))


def metric_value(text: str, name: str, **labels) -> float | None:
    """Sum of the samples of metric `name` in a Prometheus text page whose labels include
    `labels`; None where there is no such sample."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        lab = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(lab.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


def triton_paths() -> dict | None:
    """The setup's paths.json, or None when scripts/setup_triton.sh has not run."""
    p = TRITON_DIR / "paths.json"
    if not p.is_file():
        return None
    paths = json.loads(p.read_text())
    return paths if Path(paths["tritonserver"]).is_file() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(paths: dict, extra_pythonpath: list[str] | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(paths["path_prepend"] + [env.get("PATH", "")])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(paths["ld_library_path"] + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    if extra_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(extra_pythonpath + [p for p in [env.get("PYTHONPATH")] if p])
    return env


class TritonServer:
    """tritonserver on 127.0.0.1 with free HTTP/gRPC/metrics ports; stops on exit (SIGINT, then kill)."""

    def __init__(self, repo: str | Path, backend_dir: str | Path | None = None, log_path: str | Path | None = None,
                 ready_timeout: float = 120.0, extra_pythonpath: list[str] | None = None,
                 extra_args: list[str] | None = None, verbose: int = 0):
        paths = triton_paths()
        if paths is None:
            raise RuntimeError(f"Triton is not set up ({TRITON_DIR}/paths.json missing): run scripts/setup_triton.sh")
        self.paths = paths
        self.repo = Path(repo)
        self.backend_dir = Path(backend_dir) if backend_dir else None
        self.log_path = Path(log_path) if log_path else self.repo.parent / "tritonserver.log"
        self.ready_timeout = ready_timeout
        self.extra_pythonpath = extra_pythonpath
        self.extra_args = list(extra_args or [])
        self.verbose = verbose
        self.proc: subprocess.Popen | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.returncode: int | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> "TritonServer":
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        # The python backend's directory stays the bundled one; a separate --backend-directory
        # would hide it, so the exitc backend is found per model (`<model>/libtriton_exitc.so`
        # or a backend dir holding both, see exitc.triton.backend_dir()).
        backend_dir = self.backend_dir or Path(self.paths["server"]) / "backends"
        cmd = [self.paths["tritonserver"], f"--model-repository={self.repo}", f"--backend-directory={backend_dir}",
               "--http-address=127.0.0.1", f"--http-port={self.http_port}",
               "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
               "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
               "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
               "--strict-readiness=true", "--exit-on-error=true", "--exit-timeout-secs=20",
               f"--log-verbose={self.verbose}", *self.extra_args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=server_env(self.paths, self.extra_pythonpath), start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"tritonserver exited with status {self.proc.returncode} before READY; "
                                   f"log {self.log_path}:\n{self.log_text()[-4000:]}")
            if self.is_ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tritonserver not READY after {self.ready_timeout:.0f} s; log {self.log_path}:\n"
                           f"{self.log_text()[-4000:]}")

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGINT (Triton's clean shutdown), wait up to `timeout`, then SIGKILL. Returns the status."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.returncode = self.proc.returncode
        self.proc = None
        self._log.close()
        return self.returncode

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
