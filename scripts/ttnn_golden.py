#!/usr/bin/env python3
"""Ground truth for tunelab.numerics.quantize from the real ttnn wheel (host conversion, no chip).

Runs under the ttnn venv (scripts/setup_ttnn_venv.sh -> .venv-ttnn; numpy<2 + ttnn==0.81.1, no torch):

    .venv-ttnn/bin/python scripts/ttnn_golden.py --out tests/data/ttnn_golden.npz --size full --seed 0

Every generated input case is converted with ``ttnn.Tensor(..., dtype, TILE_LAYOUT)`` to bfloat16, bfloat8_b and
bfloat4_b and read back at its logical shape. The .npz holds, for case i: ``in_{i}`` (float32 input), ``bf16_{i}``,
``bfp8_{i}``, ``bfp4_{i}`` (float32 outputs, same shape), plus ``kinds`` (one description per case) and a few
metadata strings (``meta_*``).

Read-back is bit exact: bfp outputs come from ``to_numpy()`` (float32), bf16 outputs from the raw bf16 storage
(read through DLPack, widened by ``<< 16``), because ``to_list()`` / ``to_dtype(float32)`` canonicalise NaNs.
A subset of cases is also converted through the list path ``ttnn.Tensor(list, shape, dtype, layout)``; the script
fails if the two paths disagree (NaN counts as equal to NaN: the list path goes through Python floats, which
quiets signalling NaNs, so NaN-payload cases are ndarray-only).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_CLUSTER_DESC = SCRIPT_DIR / "ttnn_mock" / "wormhole_n150.yaml"

FMTS = ("bf16", "bfp8", "bfp4")


def _setup_env() -> None:
    if not os.environ.get("TT_METAL_MOCK_CLUSTER_DESC_PATH"):
        os.environ["TT_METAL_MOCK_CLUSTER_DESC_PATH"] = str(DEFAULT_CLUSTER_DESC)
    os.environ.setdefault("TT_LOGGER_LEVEL", "error")
    os.environ.setdefault("LOGURU_LEVEL", "WARNING")  # silences ttnn's "Initial ttnn.CONFIG" debug line


# --------------------------------------------------------------------------------------------------------------
# Raw read-back of bf16 tensors through DLPack (numpy has no bfloat16 dtype).


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_capsule_ptr = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_ptr.restype = ctypes.c_void_p
_capsule_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _dlpack_uint16(obj) -> np.ndarray:
    """Copy a 16-bit DLPack tensor (e.g. ttnn's bf16 nb_ndarray) into a uint16 ndarray, bits untouched."""
    capsule = obj.__dlpack__()
    dl = _DLTensor.from_address(_capsule_ptr(capsule, b"dltensor"))
    if dl.device.device_type != 1 or dl.dtype.bits != 16 or dl.dtype.lanes != 1:
        raise RuntimeError(
            f"unexpected DLPack tensor: device {dl.device.device_type}, dtype bits {dl.dtype.bits}"
        )
    shape = tuple(dl.shape[i] for i in range(dl.ndim))
    if dl.strides:
        strides = tuple(dl.strides[i] for i in range(dl.ndim))
    else:
        strides = tuple(int(np.prod(shape[i + 1 :], dtype=np.int64)) for i in range(len(shape)))
    if any(s < 0 for s in strides):
        raise RuntimeError(f"negative DLPack strides {strides}")
    extent = 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) if all(shape) else 0
    raw = np.frombuffer(ctypes.string_at(dl.data + dl.byte_offset, 2 * extent), dtype=np.uint16)
    out = np.lib.stride_tricks.as_strided(raw, shape=shape, strides=tuple(2 * s for s in strides)).copy()
    del capsule
    return out


# --------------------------------------------------------------------------------------------------------------
# ttnn conversion


def _to_logical(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Slice a possibly tile-padded read-back to the logical shape (ttnn 0.81.1 already returns logical shape)."""
    if arr.shape == shape:
        return arr
    if len(shape) == 1 and arr.ndim == 2:  # [W] is stored as [32, roundup(W, 32)]
        return arr[0, : shape[0]]
    if arr.ndim == len(shape):
        return arr[tuple(slice(0, n) for n in shape)]
    raise RuntimeError(f"cannot map read-back shape {arr.shape} to logical shape {shape}")


class Converter:
    def __init__(self) -> None:
        import ttnn

        self.ttnn = ttnn
        self.dtypes = {"bf16": ttnn.bfloat16, "bfp8": ttnn.bfloat8_b, "bfp4": ttnn.bfloat4_b}

    def _read(self, t, fmt: str, shape: tuple[int, ...]) -> np.ndarray:
        if fmt == "bf16":
            obj = t.to_numpy()
            if isinstance(obj, np.ndarray) and obj.dtype == object:
                obj = obj.item()
            bits = _dlpack_uint16(obj).astype(np.uint32) << 16
            out = bits.view(np.float32)
        else:
            out = np.asarray(t.to_numpy(), dtype=np.float32)
        out = np.ascontiguousarray(_to_logical(out, shape), dtype=np.float32)
        if out.shape != shape:
            raise RuntimeError(f"{fmt}: read-back shape {out.shape} != {shape}")
        return out

    def ndarray_path(self, x: np.ndarray, fmt: str) -> tuple[np.ndarray, object]:
        t = self.ttnn.Tensor(tensor=x, data_type=self.dtypes[fmt], layout=self.ttnn.TILE_LAYOUT)
        return self._read(t, fmt, x.shape), t

    def list_path(self, x: np.ndarray, fmt: str) -> np.ndarray:
        t = self.ttnn.Tensor(x.reshape(-1).tolist(), list(x.shape), self.dtypes[fmt], self.ttnn.TILE_LAYOUT)
        return self._read(t, fmt, x.shape)

    @staticmethod
    def to_list_values(t, shape: tuple[int, ...]) -> np.ndarray:
        return np.asarray(t.to_list(), dtype=np.float32).reshape(shape)


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise: identical int32 bit patterns, or both NaN."""
    return (a.view(np.int32) == b.view(np.int32)) | (np.isnan(a) & np.isnan(b))


# --------------------------------------------------------------------------------------------------------------
# Case generators. Each takes (rng, shape) and returns (float32 array of that shape, description of parameters).

FIXED_SHAPES: list[tuple[int, ...]] = [
    (1,),
    (7,),
    (16,),
    (17,),
    (32,),
    (33,),
    (50,),
    (100,),
    (7, 1),
    (1, 7),
    (32, 32),
    (33, 47),
    (3, 5, 40),
    (2, 3, 17, 70),
    (31, 33),
    (64, 48),
    (5, 7, 45),
    (1, 1, 32, 96),
    (2, 64, 80),
    (256,),
    (1, 129),
    (40, 16),
]


def _bits(u) -> np.ndarray:
    return np.asarray(u, dtype=np.uint32).view(np.float32)


def _sign(rng: np.random.Generator, shape) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def _blocks(shape: tuple[int, ...]) -> np.ndarray:
    """Block id of every element (16 consecutive elements of the last dim, per row); shape (n_rows, W)."""
    w = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return np.broadcast_to(np.arange(w) // 16, (rows, w))


def _one_per_block(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask (flat rows x W) selecting one random element in every 16-wide block."""
    w = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    mask = np.zeros((rows, w), dtype=bool)
    for b0 in range(0, w, 16):
        n = min(16, w - b0)
        mask[np.arange(rows), b0 + rng.integers(0, n, size=rows)] = True
    return mask


def gen_normal(rng, shape):
    k = int(rng.integers(-60, 61))
    return (rng.standard_normal(shape) * 2.0**k).astype(np.float32), f"scale=2^{k}"


def gen_loguniform(rng, shape):
    lo, hi = [(-40, 40), (-8, 8), (-60, 60), (-126, -100), (100, 127)][int(rng.integers(0, 5))]
    mag = 2.0 ** rng.uniform(lo, hi, size=shape)
    return (_sign(rng, shape) * mag).astype(np.float32), f"|x|=2^U({lo},{hi})"


def gen_uniform(rng, shape):
    k = int(rng.integers(-60, 61))
    return (rng.uniform(-1.0, 1.0, size=shape) * 2.0**k).astype(np.float32), f"U(-1,1)*2^{k}"


def gen_student_t(rng, shape):
    df = [1, 2, 3, 5][int(rng.integers(0, 4))]
    k = int(rng.integers(-60, 61))
    return (rng.standard_t(df, size=shape) * 2.0**k).astype(np.float32), f"df={df} scale=2^{k}"


def gen_bf16_valued(rng, shape):
    k = int(rng.integers(-60, 61))
    x = (rng.standard_normal(shape) * 2.0**k).astype(np.float32)
    return _bits(x.view(np.uint32) & 0xFFFF0000), f"scale=2^{k}"


def gen_column_scaled(rng, shape):
    """Per-column power-of-two scales: exponents change along the last dim, so block boundaries matter."""
    ks = rng.integers(-24, 25, size=shape[-1])
    k0 = int(rng.integers(-40, 41))
    x = rng.standard_normal(shape) * np.exp2(ks + k0)
    return x.astype(np.float32), f"col scales 2^({k0}+U[-24,24])"


def gen_row_scaled(rng, shape):
    lead = (*shape[:-1], 1)
    ks = rng.integers(-30, 31, size=lead)
    return (rng.standard_normal(shape) * np.exp2(ks)).astype(np.float32), "row scales 2^U[-30,30]"


def gen_one_large(rng, shape):
    """One element per block (or per tensor) much larger than the rest."""
    k = int(rng.integers(-30, 31))
    big = int(rng.integers(3, 40))
    x = rng.standard_normal(shape) * 2.0**k
    flat = x.reshape(-1, shape[-1])
    if rng.random() < 0.5:
        mask = _one_per_block(rng, shape)
        flat[mask] *= 2.0**big
        where = "per block"
    else:
        flat.reshape(-1)[rng.integers(0, flat.size)] *= 2.0**big
        where = "per tensor"
    return x.astype(np.float32), f"scale=2^{k} big=2^{big} {where}"


def _ties(rng, shape, m_bits: int, nudge: bool):
    """Blocks whose max is +-1.5 and whose other values lie on the half-quantum grid of an M-bit format."""
    q = 2.0 ** -(m_bits - 1)  # one code step when the shared exponent is 127 (block max in [1, 2))
    kmax = 2**m_bits
    flat_shape = (int(np.prod(shape[:-1], dtype=np.int64)), shape[-1])
    k = rng.integers(0, kmax, size=flat_shape)
    half = rng.random(flat_shape) < 0.8  # most on exact ties, some on the grid itself
    x = (k + np.where(half, 0.5, 0.0)) * q  # < 2, so the block max exponent stays 127
    x[_one_per_block(rng, shape)] = 1.5
    x = (x * _sign(rng, flat_shape)).astype(np.float32)
    desc = f"M={m_bits}"
    if nudge:  # +-1 ulp around the ties: truncated by the alignment shift or not, depending on the exponent
        sel = rng.random(flat_shape) < 0.5
        up = rng.random(flat_shape) < 0.5
        x = np.where(
            sel, np.where(up, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))), x
        )
        desc += " +-1ulp"
    s = int(rng.integers(-60, 61))
    x = (x.astype(np.float64) * 2.0**s).astype(np.float32)  # exact power-of-two rescale
    return x.reshape(shape), f"{desc} rescale=2^{s}"


def gen_ties_bfp8(rng, shape):
    return _ties(rng, shape, 7, nudge=False)


def gen_ties_bfp4(rng, shape):
    return _ties(rng, shape, 3, nudge=False)


def gen_ties_nudged(rng, shape):
    return _ties(rng, shape, [7, 3][int(rng.integers(0, 2))], nudge=True)


def gen_ties_bf16(rng, shape):
    """Random finite bf16 values with the dropped 16 bits at / around the halfway point."""
    n = int(np.prod(shape))
    hi = rng.integers(0, 0x7F80, size=n, dtype=np.uint32)  # finite, denormal and normal exponents
    hi[rng.random(n) < 0.05] = 0x7F7F  # next to FLT_MAX: ties there round to inf
    lo = np.array([0x8000, 0x8000, 0x8000, 0x7FFF, 0x8001, 0x0000, 0xFFFF, 0x0001], np.uint32)
    bits = (hi << 16) | lo[rng.integers(0, len(lo), size=n)]
    bits |= np.where(rng.random(n) < 0.5, 0x80000000, 0).astype(np.uint32)
    return _bits(bits).reshape(shape), "low16 in {8000,7fff,8001,0,ffff,1}"


def gen_saturation(rng, shape):
    """Block maxima with mantissas close to all-ones (1.99.., 255.9, 0x..7fffff) that round up and saturate."""
    k = int(rng.integers(-60, 61))
    x = rng.standard_normal(shape) * 0.5
    flat = x.reshape(-1, shape[-1])
    mask = _one_per_block(rng, shape)
    mant = 0x7FFFFF - rng.integers(0, 0x40000, size=int(mask.sum()))
    flat[mask] = _bits((127 << 23) | mant).astype(np.float64) * np.where(
        rng.random(int(mask.sum())) < 0.5, -1, 1
    )
    x = (x * 2.0**k).astype(np.float32)
    return x, f"max mantissa ~0x7fffff scale=2^{k}"


def gen_tiny_normals(rng, shape):
    """Normal numbers whose exponent field is 1..12, mixed with denormals and zeros."""
    n = int(np.prod(shape))
    emax = int(rng.integers(1, 13))
    variant = int(rng.integers(0, 3))
    if variant == 0:  # exponent field uniform in 1..emax, random mantissa
        e = rng.integers(1, emax + 1, size=n, dtype=np.uint32)
        desc = f"exp field U[1,{emax}]"
    elif variant == 1:  # one element per block at exponent emax, the rest spread 1..emax
        e = rng.integers(1, emax + 1, size=n, dtype=np.uint32).reshape(-1, shape[-1])
        e[_one_per_block(rng, shape)] = emax
        e = e.reshape(-1)
        desc = f"block max exp field {emax}, others U[1,{emax}]"
    else:  # exponent field 1..emax, with denormals and zeros interleaved
        e = rng.integers(0, emax + 1, size=n, dtype=np.uint32)
        desc = f"exp field U[0,{emax}] (0 = denormal/zero)"
    mant = rng.integers(0, 1 << 23, size=n, dtype=np.uint32)
    mant[rng.random(n) < 0.1] = 0
    sign = np.where(rng.random(n) < 0.5, np.uint32(0x80000000), np.uint32(0))
    return _bits(sign | (e << 23) | mant).reshape(shape), desc


def gen_tiny_scaled(rng, shape):
    """randn * ~1e-38: a mix of FP32 denormals and the smallest normals."""
    s = [1e-38, 3e-38, 1e-37, 1e-36, 2e-39][int(rng.integers(0, 5))]
    return (rng.standard_normal(shape) * s).astype(np.float32), f"randn*{s:g}"


def gen_denormals(rng, shape):
    """Blocks of only denormals/zeros, and denormals next to normals."""
    n = int(np.prod(shape))
    mant = rng.integers(0, 1 << 23, size=n, dtype=np.uint32)
    sign = np.where(rng.random(n) < 0.5, np.uint32(0x80000000), np.uint32(0))
    x = _bits(sign | mant).reshape(-1, shape[-1]).copy()
    if rng.random() < 0.5:
        mask = _one_per_block(rng, shape) & (rng.random(x.shape) < 0.5)
        k = int(rng.integers(-126, 0))
        x[mask] = np.float32(2.0**k * 1.3)
        desc = f"denormals, some blocks with one normal 1.3*2^{k}"
    else:
        desc = "denormals and zeros only"
    return x.reshape(shape), desc


def gen_huge(rng, shape):
    """Exponent field 250..254 (near FLT_MAX): rounding up lands on 2^128."""
    n = int(np.prod(shape))
    e = rng.integers(250, 255, size=n, dtype=np.uint32)
    mant = rng.integers(0, 1 << 23, size=n, dtype=np.uint32)
    sel = rng.random(n) < 0.2
    mant[sel] = 0x7FFFFF - rng.integers(0, 4096, size=int(sel.sum()), dtype=np.uint32)
    sign = np.where(rng.random(n) < 0.5, np.uint32(0x80000000), np.uint32(0))
    return _bits(sign | (e << 23) | mant).reshape(shape), "exp field U[250,254]"


def gen_random_finite_bits(rng, shape):
    n = int(np.prod(shape))
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    bad = ((bits >> 23) & 0xFF) == 0xFF
    bits[bad] &= np.uint32(0x807FFFFF)  # exponent 255 -> 0 (denormal) instead
    return _bits(bits).reshape(shape), "uniform finite bit patterns"


def gen_random_all_bits(rng, shape):
    n = int(np.prod(shape))
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    e = rng.integers(0, 256, size=n, dtype=np.uint32)  # more inf/NaN than uniform bits would give
    sel = rng.random(n) < 0.3
    bits[sel] = (bits[sel] & np.uint32(0x807FFFFF)) | (e[sel] << 23)
    return _bits(bits).reshape(shape), "uniform bit patterns incl. inf / NaN payloads"


def gen_nan_payloads(rng, shape):
    """Quiet and signalling NaNs with random payloads and signs, next to ordinary values."""
    n = int(np.prod(shape))
    x = (rng.standard_normal(n) * 2.0 ** int(rng.integers(-20, 21))).astype(np.float32)
    sel = rng.random(n) < 0.15
    m = int(sel.sum())
    mant = rng.integers(1, 1 << 23, size=m, dtype=np.uint32)
    mant[: m // 4] = rng.integers(1, 16, size=m // 4, dtype=np.uint32)  # tiny payloads: sNaN -> inf in bfp
    sign = np.where(rng.random(m) < 0.5, np.uint32(0x80000000), np.uint32(0))
    x[sel] = _bits(sign | np.uint32(0x7F800000) | mant)
    return x.reshape(shape), "NaN payloads (quiet and signalling)"


_SPECIALS = [
    0x00000000,  # +0
    0x80000000,  # -0
    0x00000001,  # smallest denormal
    0x807FFFFF,  # -largest denormal
    0x00400000,  # denormal 2^-127
    0x00800000,  # smallest normal
    0x80800001,
    0x7F800000,  # +inf
    0xFF800000,  # -inf
    0x7FC00000,  # NaN
    0xFFC00000,  # -NaN
    0x7F7FFFFF,  # FLT_MAX
    0xFF7FFFFF,  # -FLT_MAX
    0x437FE666,  # 255.9
    0x43030000,  # 131
    0x3F000000,  # 0.5
    0x40200000,  # 2.5
    0x3FFFFFAC,  # 1.99999
    0x3F400000,  # 0.75
    0x7F61B1E6,  # 3e38
    0x3F800000,  # 1
    0xBF800000,  # -1
    0x3FC00000,  # 1.5
    0x42C80000,  # 100
]
_CONTEXTS = {
    "zeros": 0x00000000,
    "1.0": 0x3F800000,
    "100": 0x42C80000,
    "1e30": 0x7149F2CA,
    "2^-125": 0x01000000,
    "2^-120": 0x03800000,
    "denormal": 0x00000123,
    "inf": 0x7F800000,
    "-inf": 0xFF800000,
    "NaN": 0x7FC00000,
    "FLT_MAX": 0x7F7FFFFF,
}


def specials_case(rng) -> tuple[np.ndarray, str]:
    """Every special value in every block context: each row holds (context, 15 specials) per 16-block."""
    rows = []
    names = list(_CONTEXTS)
    for name in names:
        for start in range(0, len(_SPECIALS), 15):
            chunk = _SPECIALS[start : start + 15]
            chunk = chunk + _SPECIALS[: 15 - len(chunk)]
            for _ in range(2):
                block = [int(v) for v in rng.permutation(np.array(chunk, dtype=np.uint32))]
                pos = int(rng.integers(0, 16))
                block.insert(pos, _CONTEXTS[name])
                rows.append(block)
    arr = np.array(rows, dtype=np.uint32)
    n = arr.shape[0] - arr.shape[0] % 2
    arr = arr[:n].reshape(n // 2, 32)  # two 16-blocks per row
    return _bits(arr), f"x {len(names)} block contexts ({', '.join(names)})"


def scale_examples_case() -> tuple[np.ndarray, str]:
    """Documented examples: 100-dominated block, 255.9 saturation, 131 tie, etc. (one 32-wide row each)."""
    rows = [
        [100.0, 0.5, 2.5, 1.9999, 0.75, 1.5, -0.5, -2.5, 3.5, 64.5, 99.5, 98.5, 1.0, -1.0, 7.75, 33.0],
        [255.9, 131.0, 129.0, 130.0, 133.0, 135.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
        [1.5, 1.0 / 128, 3.0 / 128, 1.0 / 64, 3.0 / 256, 0.25, 0.375, 0.625, 0.875, 1.125, 1.375, 1.625,
         1.875, 1.4375, 1.3125, 0.0625],
        [-0.0, -0.0, 1.0, -0.001, 0.001, -1e-10, 1e-10, 0.0, -0.0, 2.0**-7, 2.0**-8, -(2.0**-9),
         3.0 * 2**-9, 2.0**-3, 2.0**-4, -(2.0**-5)],
    ]  # fmt: skip
    arr = np.array(rows, dtype=np.float32)
    arr = np.concatenate([arr, -arr[:, ::-1]], axis=1)
    return arr, "documented examples (100-dominated, 255.9, 131 ties, 1.5-dominated grid, -0)"


Gen = Callable[[np.random.Generator, tuple[int, ...]], tuple[np.ndarray, str]]

# name, generator, list path allowed (False where Python floats would alter signalling-NaN payloads)
GENERATORS: list[tuple[str, Gen, bool]] = [
    ("normal", gen_normal, True),
    ("loguniform", gen_loguniform, True),
    ("uniform", gen_uniform, True),
    ("student_t", gen_student_t, True),
    ("bf16_valued", gen_bf16_valued, True),
    ("column_scaled", gen_column_scaled, True),
    ("row_scaled", gen_row_scaled, True),
    ("one_large", gen_one_large, True),
    ("ties_bfp8", gen_ties_bfp8, True),
    ("ties_bfp4", gen_ties_bfp4, True),
    ("ties_nudged", gen_ties_nudged, True),
    ("ties_bf16", gen_ties_bf16, True),
    ("saturation", gen_saturation, True),
    ("tiny_normals", gen_tiny_normals, True),
    ("tiny_scaled", gen_tiny_scaled, True),
    ("denormals", gen_denormals, True),
    ("huge", gen_huge, True),
    ("random_finite_bits", gen_random_finite_bits, True),
    ("random_all_bits", gen_random_all_bits, False),
    ("nan_payloads", gen_nan_payloads, False),
]

SIZES = {
    # rounds over all generators, max elements per random shape, list-path stride
    "small": {"rounds": 3, "max_elems": 1024, "list_every": 1},
    "full": {"rounds": 24, "max_elems": 4096, "list_every": 4},
}


def _random_shape(rng: np.random.Generator, max_elems: int) -> tuple[int, ...]:
    while True:
        rank = int(rng.integers(1, 5))
        w = int(rng.integers(1, 161))
        shape = [w]
        if rank >= 2:
            shape.insert(0, int(rng.integers(1, 70)))
        for _ in range(rank - 2):
            shape.insert(0, int(rng.integers(1, 4)))
        if int(np.prod(shape)) <= max_elems:
            return tuple(shape)


def generate_cases(seed: int, size: str) -> list[tuple[str, np.ndarray, bool]]:
    cfg = SIZES[size]
    rng = np.random.default_rng(seed)
    cases: list[tuple[str, np.ndarray, bool]] = []
    x, desc = specials_case(rng)
    cases.append((f"specials {desc}", x, True))
    x, desc = scale_examples_case()
    cases.append((f"examples {desc}", x, True))
    fixed = [s for s in FIXED_SHAPES if int(np.prod(s)) <= cfg["max_elems"] * 2]
    i_shape = 0
    for r in range(cfg["rounds"]):
        for name, gen, list_ok in GENERATORS:
            if r == 0 or (size == "small" and r <= 2):
                shape = fixed[i_shape % len(fixed)]
                i_shape += 1
            else:
                shape = _random_shape(rng, cfg["max_elems"])
            x, desc = gen(rng, shape)
            x = np.ascontiguousarray(x, dtype=np.float32)
            assert x.shape == shape, (name, x.shape, shape)
            cases.append((f"{name} shape={shape} {desc}", x, list_ok))
    # every fixed shape with plain normal data, so rank/padding handling is covered for each shape
    for shape in fixed:
        x, desc = gen_normal(rng, shape)
        cases.append((f"normal shape={shape} {desc}", x, True))
    return cases


# --------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output .npz path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    args = ap.parse_args(argv)

    _setup_env()
    t0 = time.perf_counter()
    conv = Converter()
    cases = generate_cases(args.seed, args.size)
    list_every = SIZES[args.size]["list_every"]

    arrays: dict[str, np.ndarray] = {}
    kinds: list[str] = []
    problems: list[str] = []
    n_list = 0
    for i, (kind, x, list_ok) in enumerate(cases):
        arrays[f"in_{i}"] = x
        kinds.append(kind)
        check_list = list_ok and i % list_every == 0
        for fmt in FMTS:
            y, t = conv.ndarray_path(x, fmt)
            arrays[f"{fmt}_{i}"] = y
            if not check_list:
                continue
            n_list += x.size if fmt == "bf16" else 0
            y_list = conv.list_path(x, fmt)
            ok = same_bits(y, y_list)
            if not ok.all():
                j = int(np.flatnonzero(~ok.reshape(-1))[0])
                problems.append(
                    f"case {i} [{kind}] {fmt}: ndarray vs list path differ at {int((~ok).sum())} elements; "
                    f"first flat {j}: in {x.reshape(-1)[j : j + 1].view(np.uint32)[0]:08x} "
                    f"ndarray {y.reshape(-1)[j : j + 1].view(np.uint32)[0]:08x} "
                    f"list {y_list.reshape(-1)[j : j + 1].view(np.uint32)[0]:08x}"
                )
            # the raw bf16 / to_numpy read-back must agree with to_list() (which canonicalises NaN)
            ok = same_bits(y, conv.to_list_values(t, x.shape))
            if not ok.all():
                problems.append(
                    f"case {i} [{kind}] {fmt}: read-back differs from to_list() at {int((~ok).sum())}"
                )

    if problems:
        print("ttnn_golden: PATH DISAGREEMENT\n  " + "\n  ".join(problems[:50]), file=sys.stderr)
        return 1

    try:
        from importlib.metadata import version

        ttnn_version = version("ttnn")
    except Exception:
        ttnn_version = "unknown"
    arrays["kinds"] = np.array(kinds)
    arrays["meta_ttnn_version"] = np.array(ttnn_version)
    arrays["meta_seed"] = np.array(args.seed)
    arrays["meta_size"] = np.array(args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    n_elems = sum(x.size for _, x, _ in cases)
    print(
        f"ttnn_golden: {len(cases)} cases, {n_elems} elements ({n_list} also via list path, paths agree), "
        f"ttnn {ttnn_version}, seed {args.seed}, size {args.size} -> {args.out} "
        f"({args.out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
