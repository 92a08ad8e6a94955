"""Run a ringdaq pipeline from Python: for tests, benchmarks and notebooks.

    from ringdaq.launch import Pipeline

    with Pipeline() as p:                      # `ringdaq run` in a private runtime directory
        acq, path = p.acquire(100, "scan.npy")
        p.simulate(110, fps=200).wait()        # the built-in detector simulator
        p.wait_file(path)

The `ringdaq` binary is found in $RINGDAQ_BIN_DIR, else on $PATH.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# Small rings (about 110 MB of shared memory) and a frame timeout long enough for a busy test machine.
SMALL_RINGS = """[rings]
block_slots = 32
datagrams_per_slot = 64
frame_slots = 8
[assembler]
timeout_ms = 500
"""


def ringdaq_binary() -> Path:
    """The `ringdaq` executable: in $RINGDAQ_BIN_DIR, else on $PATH."""
    d = os.environ.get("RINGDAQ_BIN_DIR")
    if d:
        p = Path(d) / "ringdaq"
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist (RINGDAQ_BIN_DIR)")
        return p
    found = shutil.which("ringdaq")
    if not found:
        raise FileNotFoundError("no ringdaq binary: set RINGDAQ_BIN_DIR or put it on PATH")
    return Path(found)


def free_port_base(n: int = 8) -> int:
    """A base port with `n` consecutive free UDP ports on 127.0.0.1."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65536:
            continue
        socks = []
        try:
            for i in range(n):
                t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(t)
                t.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free UDP ports")


class Pipeline:
    """`ringdaq run` in a runtime directory of its own (a temporary one unless `root` is given)."""

    def __init__(self, root: Path | None = None, config: str = SMALL_RINGS, ready_timeout: float = 20):
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="ringdaq-")) if root is None else Path(root)
        self.rt = self.root / "rt"
        self.port_base = free_port_base()
        self.bin = ringdaq_binary()
        (self.root / "ringdaq.toml").write_text(config)
        self._log = open(self.root / "ringdaq.log", "wb")
        self.proc = subprocess.Popen(
            [str(self.bin), "--runtime-dir", str(self.rt), "run", "--port-base", str(self.port_base),
             "--config", str(self.root / "ringdaq.toml")],
            stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            r = self.cli("status", check=False)
            if r.returncode == 0 and r.stdout.count(" running ") == 3:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = self.log()
        self.close()
        raise RuntimeError("the pipeline did not start:\n" + log)

    def log(self) -> str:
        """The supervisor's log so far."""
        return (self.root / "ringdaq.log").read_text(errors="replace")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs `ringdaq --runtime-dir <rt> ARGS...`."""
        return subprocess.run([str(self.bin), "--runtime-dir", str(self.rt), *args], capture_output=True,
                              text=True, check=check, timeout=120)

    def acquire(self, frames: int, name: str) -> tuple[int, Path]:
        """Arms an acquisition of `frames` frames into `<root>/<name>`; returns its id and path."""
        path = self.root / name
        r = self.cli("acquire", "--frames", str(frames), "--out", str(path))
        return int(r.stdout.strip()), path

    def simulate(self, frames: int, fps: float, *sim_args: str) -> subprocess.Popen:
        """Starts the simulator sending `frames` frames at `fps` to this pipeline (more `ringdaq sim` options in
        `sim_args`, e.g. "--detector", "jungfrau", "--modules", "2")."""
        return subprocess.Popen([str(self.bin), "sim", "--port-base", str(self.port_base), "--frames",
                                 str(frames), "--fps", str(fps), *sim_args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def wait_file(self, path: Path, timeout: float = 60) -> None:
        """Waits until an acquisition's file is final (the writer renames it into place last)."""
        deadline = time.monotonic() + timeout
        while not Path(path).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} was not written:\n" + self.log())
            time.sleep(0.05)

    def close(self) -> None:
        """Shuts the pipeline down (and removes a temporary runtime directory)."""
        if self.proc.poll() is None:
            self.cli("shutdown", check=False)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
