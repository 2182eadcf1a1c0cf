"""tunelab.numerics.quantize vs the real ttnn 0.81.1 host conversion, bit for bit.

* ``test_quantize_matches_golden``: the committed golden file tests/data/ttnn_golden.npz (made by
  ``scripts/ttnn_golden.py --size full --seed 0`` under the ttnn venv).
* ``test_quantize_matches_live_ttnn``: regenerates a small set with another seed through the real ttnn wheel when
  ``.venv-ttnn`` (or ``$TUNELAB_TTNN_PYTHON``) can import ttnn; skipped otherwise.

Comparison: int32 bit patterns must be equal (so -0.0 vs +0.0 is a mismatch); NaN matches any NaN.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "ttnn_golden.npz"
GOLDEN_SCRIPT = ROOT / "scripts" / "ttnn_golden.py"
CLUSTER_DESC = ROOT / "scripts" / "ttnn_mock" / "wormhole_n150.yaml"
FMTS = ("bf16", "bfp8", "bfp4")
LIVE_SEED = 12345
SHOW = 12  # mismatches listed in a failure message


def _bits_hex(v: np.ndarray) -> str:
    return f"{int(np.asarray(v, dtype=np.float32).view(np.uint32)):08x}"


def compare_golden(npz_path: Path, fmt: str) -> tuple[int, int, list[str]]:
    """Run quantize on every case of a golden .npz; return (mismatches, elements, report lines)."""
    from tunelab.numerics import quantize

    mismatches, elements = 0, 0
    lines: list[str] = []
    per_kind: dict[str, int] = {}
    block_shown = False
    with np.load(npz_path) as data:
        kinds = [str(k) for k in data["kinds"]]
        for i, kind in enumerate(kinds):
            x = data[f"in_{i}"]
            want = data[f"{fmt}_{i}"]
            elements += x.size
            got_t = quantize(torch.from_numpy(x.copy()), fmt)
            got = got_t.detach().cpu().numpy() if isinstance(got_t, torch.Tensor) else np.asarray(got_t)
            if got.shape != want.shape or got.dtype != np.float32:
                mismatches += x.size
                per_kind[kind.split()[0]] = per_kind.get(kind.split()[0], 0) + x.size
                lines.append(
                    f"case {i} [{kind}]: got shape {got.shape} dtype {got.dtype}, want {want.shape} float32"
                )
                continue
            bad = (got.view(np.int32) != want.view(np.int32)) & ~(np.isnan(got) & np.isnan(want))
            n_bad = int(bad.sum())
            if not n_bad:
                continue
            mismatches += n_bad
            per_kind[kind.split()[0]] = per_kind.get(kind.split()[0], 0) + n_bad
            for flat in np.flatnonzero(bad.reshape(-1)):
                if len(lines) >= SHOW:
                    break
                idx = np.unravel_index(int(flat), x.shape)
                xi, wi, gi = x[idx], want[idx], got[idx]
                lines.append(
                    f"case {i} [{kind}] index {tuple(int(j) for j in idx)}: "
                    f"in {_bits_hex(xi)} ({float(xi)!r}) expected {_bits_hex(wi)} ({float(wi)!r}) "
                    f"got {_bits_hex(gi)} ({float(gi)!r})"
                )
                if not block_shown:  # the 16-wide block around the first mismatch
                    block_shown = True
                    row = x.reshape(-1, x.shape[-1])[int(flat) // x.shape[-1]]
                    b0 = (int(flat) % x.shape[-1]) // 16 * 16
                    block = " ".join(_bits_hex(v) for v in row[b0 : b0 + 16])
                    lines.append(f"    its block (last-dim cols {b0}..{b0 + 15}) input bits: {block}")
    if per_kind:
        lines.append("mismatches by kind: " + ", ".join(f"{k}={n}" for k, n in sorted(per_kind.items())))
    return mismatches, elements, lines


def assert_matches(npz_path: Path, fmt: str) -> None:
    mismatches, elements, lines = compare_golden(npz_path, fmt)
    assert mismatches == 0, (
        f"quantize(x, {fmt!r}) differs from ttnn on {mismatches} of {elements} elements "
        f"({npz_path.name}):\n  " + "\n  ".join(lines)
    )


@pytest.mark.parametrize("fmt", FMTS)
def test_quantize_matches_golden(fmt: str) -> None:
    assert GOLDEN.exists(), f"missing {GOLDEN}; regenerate with scripts/ttnn_golden.py --size full --seed 0"
    assert_matches(GOLDEN, fmt)


def _ttnn_python() -> str | None:
    """Path of a Python that can import ttnn, or None."""
    candidate = os.environ.get("TUNELAB_TTNN_PYTHON") or str(ROOT / ".venv-ttnn" / "bin" / "python")
    if not Path(candidate).exists():
        return None
    try:
        ok = subprocess.run(
            [candidate, "-c", "import ttnn"],
            env=_ttnn_env(),
            capture_output=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return candidate if ok.returncode == 0 else None


def _ttnn_env() -> dict[str, str]:
    env = dict(os.environ)
    if not env.get("TT_METAL_MOCK_CLUSTER_DESC_PATH"):
        env["TT_METAL_MOCK_CLUSTER_DESC_PATH"] = str(CLUSTER_DESC)
    env.setdefault("TT_LOGGER_LEVEL", "error")
    env.setdefault("LOGURU_LEVEL", "WARNING")
    return env


@pytest.fixture(scope="module")
def live_golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = _ttnn_python()
    if python is None:
        pytest.skip(
            "no Python that imports ttnn ($TUNELAB_TTNN_PYTHON, else .venv-ttnn/bin/python); "
            "create it with `make ttnn-venv` or scripts/setup_ttnn_venv.sh"
        )
    out = tmp_path_factory.mktemp("ttnn_live") / f"ttnn_golden_small_seed{LIVE_SEED}.npz"
    cmd = [python, str(GOLDEN_SCRIPT), "--out", str(out), "--size", "small", "--seed", str(LIVE_SEED)]
    proc = subprocess.run(cmd, env=_ttnn_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.mark.parametrize("fmt", FMTS)
def test_quantize_matches_live_ttnn(live_golden: Path, fmt: str) -> None:
    assert_matches(live_golden, fmt)
