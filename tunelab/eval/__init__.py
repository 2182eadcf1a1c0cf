"""Accuracy evaluation: corpora and their windows (`corpus`), cached reference logits (`reference`),
teacher-forced metrics (`accuracy`) and tt-metal .refpt interop (`refpt`); the last two import torch, so they load
on first use. Throughput lives in `tunelab.perf`.
"""

from tunelab.eval.corpus import CORPORA, CorpusSpec, WindowSpec, make_windows, register_corpus, resolve_corpus
from tunelab.eval.reference import Reference, ReferenceError, ReferenceStore, build_reference

__all__ = [
    "CORPORA",
    "AccuracyResult",
    "CorpusSpec",
    "Reference",
    "ReferenceError",
    "ReferenceStore",
    "WindowSpec",
    "build_reference",
    "evaluate",
    "export_refpt",
    "import_refpt",
    "make_windows",
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
