"""Measure a config on Tenstorrent hardware through tt-transformers' own entry points.

Speed and TTFT come from `demo/simple_text_demo.py` (`-k "performance and batch-1"`), top-1/top-5 from
`tests/test_accuracy.py` (`-k "performance and file"`, the reference-file mode), both with the exported config as
`--decoder_config_file` and `HF_MODEL` / `MESH_DEVICE` set, as `lt` runs them. A failed or timed-out run is retried
once after a device reset (`tt-smi -r`). Without tt-metal, ttnn and a device it refuses in one line.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.files import atomic_write
from tunelab.interop import write_decoder_config
from tunelab.perf import Device, Throughput
from tunelab.precision import ModelPrecision
from tunelab.presets import model_basename

__all__ = [
    "ACCURACY_TEST",
    "DEMO",
    "HardwareRunFailed",
    "HardwareUnavailable",
    "Job",
    "Measurement",
    "TTHardware",
    "accuracy_job",
    "detect_tt_metal",
    "parse_accuracy",
    "parse_speed",
    "speed_job",
]

DEMO = "models/tt_transformers/demo/simple_text_demo.py"
ACCURACY_TEST = "models/tt_transformers/tests/test_accuracy.py"
RESET = ("tt-smi", "-r")
DEMO_PROMPT_TOKENS = 128  # the demo's batch-1 prompts
SPEED = re.compile(r"@\s*([\d.]+)\s*tok/s/user")
TTFT = re.compile(r"\(TTFT\):\s*([\d.]+)\s*ms")
TOP_ACCURACY_TEST = re.compile(r"Top-1:\s*([\d.]+)\s*%\s*\|\s*Top-5:\s*([\d.]+)\s*%")
TOP_DEMO = re.compile(r"Top1 Accuracy:\s*([\d.]+)\s*%,\s*Top5 Accuracy:\s*([\d.]+)\s*%")

Execute = Callable[..., subprocess.CompletedProcess]


class HardwareUnavailable(TunelabError):
    """No tt-metal, ttnn or Tenstorrent device here."""


class HardwareRunFailed(TunelabError):
    """A tt-transformers run failed twice (before and after a device reset) or printed no metrics."""


@dataclass(frozen=True)
class Job:
    """One tt-transformers pytest invocation."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    timeout_s: float


@dataclass(frozen=True)
class Measurement:
    """What a hardware evaluation measured; `throughput.kind` is "measured", top-1/top-5 in percent."""

    throughput: Throughput
    top1: float
    top5: float
    logs: tuple[Path, ...] = field(default=())


def detect_tt_metal(
    environ: Mapping[str, str] = os.environ, device_root: Path = Path("/dev/tenstorrent")
) -> Path:
    """The tt-metal checkout to run from; raises `HardwareUnavailable` naming the first thing missing."""
    home = environ.get("TT_METAL_HOME")
    if home and (Path(home) / "models" / "tt_transformers").is_dir():
        root = Path(home)
    else:
        spec = _find_spec("models.tt_transformers")
        if spec is None or not spec.submodule_search_locations:
            raise HardwareUnavailable(
                "no Tenstorrent hardware: TT_METAL_HOME is unset (or lacks models/tt_transformers) "
                "and models.tt_transformers is not importable"
            )
        root = Path(next(iter(spec.submodule_search_locations))).parent.parent
    if _find_spec("ttnn") is None:
        raise HardwareUnavailable("no Tenstorrent hardware: ttnn is not importable in this Python")
    if not device_root.is_dir() or not any(device_root.iterdir()):
        raise HardwareUnavailable(f"no Tenstorrent hardware: no device under {device_root}")
    return root


def speed_job(
    root: Path, hf_model: str, device: Device, config_file: Path, batch: int = 1, timeout_s: float = 3600
) -> Job:
    """The demo run that prints decode tok/s/user and TTFT (its batch-1 or batch-32 case; other sizes override
    batch-1's `--batch_size`, as tt-transformers' README shows)."""
    case = "batch-32" if batch == 32 else "batch-1"
    argv = [sys.executable, "-m", "pytest", DEMO, "-k", f"performance and {case}"]
    argv += ["--decoder_config_file", str(Path(config_file).resolve())]  # pytest runs from the tt-metal root
    argv += ["--timeout", str(round(timeout_s))]  # tt-metal's pytest.ini stops a test at 300 s
    if batch not in (1, 32):
        argv += ["--batch_size", str(batch)]
    return Job("demo", tuple(argv), _env(root, hf_model, device), root, timeout_s)


def accuracy_job(
    root: Path, hf_model: str, device: Device, config_file: Path, timeout_s: float = 3600
) -> Job:
    """The teacher-forced accuracy test against the reference file (prefill 512, 511 decode steps)."""
    argv = (sys.executable, "-m", "pytest", ACCURACY_TEST, "-k", "performance and file")
    argv += ("--decoder_config_file", str(Path(config_file).resolve()))  # pytest runs from the tt-metal root
    argv += ("--timeout", str(round(timeout_s)))  # tt-metal's pytest.ini stops a test at 300 s
    return Job("accuracy", argv, _env(root, hf_model, device), root, timeout_s)


def parse_speed(log: str) -> tuple[float, float | None]:
    """(tok/s/user, TTFT ms) from demo output; the last speed line (the run's average) wins."""
    speeds = SPEED.findall(log)
    if not speeds:
        raise HardwareRunFailed("no '@ X tok/s/user' line in the demo output")
    ttfts = TTFT.findall(log)
    return float(speeds[-1]), float(ttfts[-1]) if ttfts else None


def parse_accuracy(log: str) -> tuple[float, float]:
    """(top-1 %, top-5 %) from test_accuracy's `Top-1: N% | Top-5: M%` or the demo's `Top1 Accuracy: X%, ...`."""
    found = TOP_ACCURACY_TEST.findall(log) or TOP_DEMO.findall(log)
    if not found:
        raise HardwareRunFailed("no 'Top-1: N% | Top-5: M%' or 'Top1 Accuracy: X%' line in the output")
    top1, top5 = found[-1]
    return float(top1), float(top5)


class TTHardware:
    """Evaluates per-decoder configs of one model on one device; results are marked "measured"."""

    def __init__(
        self,
        hf_model: str,
        device: Device,
        workdir: str | Path,
        root: Path | None = None,
        execute: Execute = subprocess.run,
        timeout_s: float = 3600,
    ):
        self.hf_model = hf_model
        self.device = device
        self.workdir = Path(workdir)
        self.root = root if root is not None else detect_tt_metal()
        self.execute = execute
        self.timeout_s = timeout_s
        self._runs = 0

    def evaluate(self, precision: ModelPrecision, batch: int = 1) -> Measurement:
        """Run the demo and the accuracy test on `precision` (written as a complete decoder_config file)."""
        config_file = _directory(self.workdir) / f"config-{self._runs:04d}.json"
        write_decoder_config(precision, config_file)
        speed = speed_job(self.root, self.hf_model, self.device, config_file, batch, self.timeout_s)
        accuracy = accuracy_job(self.root, self.hf_model, self.device, config_file, self.timeout_s)
        (tok_s_u, ttft_ms), speed_log = self._run(speed, parse_speed)
        (top1, top5), accuracy_log = self._run(accuracy, parse_accuracy)
        throughput = Throughput(
            tok_s_u=tok_s_u,
            ttft_ms=ttft_ms,
            kind="measured",
            model=model_basename(self.hf_model),
            device=self.device.name,
            batch=batch,
            seq_len=DEMO_PROMPT_TOKENS,
        )
        return Measurement(throughput, top1, top5, (speed_log, accuracy_log))

    def _run(self, job: Job, parse: Callable[[str], tuple]) -> tuple[tuple, Path]:
        """Run a job and parse its output; on failure reset the device and try once more."""
        problem = ""
        for attempt in range(2):
            if attempt:
                self._reset()
            self._runs += 1
            log_path = (
                _directory(self.workdir / "logs") / f"{self._runs:04d}-{self.device.name}-{job.name}.log"
            )
            try:
                done = self.execute(
                    list(job.argv), env=dict(job.env), cwd=job.cwd, capture_output=True, text=True,
                    timeout=job.timeout_s,
                )  # fmt: skip
            except OSError as exc:
                raise HardwareRunFailed(f"{job.name} run could not start: {exc.strerror or exc}") from None
            except subprocess.TimeoutExpired as exc:
                atomic_write(log_path, _text(exc.stdout) + _text(exc.stderr))
                problem = f"timed out after {job.timeout_s:.0f} s"
                continue
            log = _text(done.stdout) + _text(done.stderr)
            atomic_write(log_path, log)
            if done.returncode != 0:
                problem = f"exit status {done.returncode}"
                continue
            try:
                return parse(log), log_path
            except HardwareRunFailed as exc:
                problem = str(exc)
        raise HardwareRunFailed(
            f"{job.name} run failed twice (device reset between): {problem}; see {log_path}"
        )

    def _reset(self) -> None:
        try:
            done = self.execute(list(RESET), capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HardwareRunFailed(f"device reset `{' '.join(RESET)}` failed: {exc}") from None
        if done.returncode != 0:
            raise HardwareRunFailed(
                f"device reset `{' '.join(RESET)}` failed with exit status {done.returncode}"
            )


def _directory(path: Path) -> Path:
    """`path`, created if missing; one that cannot be (a file is in the way, no permission) is one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunelabError(f"{path}: cannot create the directory: {exc.strerror or exc}") from None
    return path


def _env(root: Path, hf_model: str, device: Device) -> dict[str, str]:
    return {**os.environ, "TT_METAL_HOME": str(root), "HF_MODEL": hf_model, **device.env}


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
