"""Evaluation: the Tenstorrent device catalog and the calibrated decode/prefill performance model.

`predict(model, precision, device)` gives a modelled `Throughput` (tok/s/user, TTFT); `tunelab.backends.tt_hardware`
gives measured ones on a device.

Accuracy: corpora and their windows (`corpus`), cached reference logits (`reference`), teacher-forced metrics
(`accuracy`) and tt-metal .refpt interop (`refpt`); the last two import torch, so they load on first use.
"""

from tunelab.eval.corpus import CORPORA, CorpusSpec, WindowSpec, make_windows, register_corpus, resolve_corpus
from tunelab.eval.devices import DEVICES, Device, UnknownDevice, device
from tunelab.eval.reference import Reference, ReferenceError, ReferenceStore, build_reference
from tunelab.eval.shapes import KNOWN_MODELS, UnknownModel, model_shape
from tunelab.eval.support import Unsupported
from tunelab.eval.throughput import DoesNotFit, PerfParams, Throughput, load_params, predict

__all__ = [
    "CORPORA",
    "DEVICES",
    "KNOWN_MODELS",
    "AccuracyResult",
    "CorpusSpec",
    "Device",
    "DoesNotFit",
    "PerfParams",
    "Reference",
    "ReferenceError",
    "ReferenceStore",
    "Throughput",
    "UnknownDevice",
    "UnknownModel",
    "Unsupported",
    "WindowSpec",
    "build_reference",
    "device",
    "evaluate",
    "export_refpt",
    "import_refpt",
    "load_params",
    "make_windows",
    "model_shape",
    "predict",
    "register_corpus",
    "resolve_corpus",
]

_LAZY = {
    "AccuracyResult": "tunelab.eval.accuracy",
    "evaluate": "tunelab.eval.accuracy",
    "export_refpt": "tunelab.eval.refpt",
    "import_refpt": "tunelab.eval.refpt",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunelab.eval' has no attribute {name!r}")
