"""Evaluation: the Tenstorrent device catalog and the calibrated decode/prefill performance model.

`predict(model, precision, device)` gives a modelled `Throughput` (tok/s/user, TTFT); `tunelab.backends.tt_hardware`
gives measured ones on a device.
"""

from tunelab.eval.devices import DEVICES, Device, UnknownDevice, device
from tunelab.eval.shapes import KNOWN_MODELS, UnknownModel, model_shape
from tunelab.eval.support import Unsupported
from tunelab.eval.throughput import DoesNotFit, PerfParams, Throughput, load_params, predict

__all__ = [
    "DEVICES",
    "KNOWN_MODELS",
    "Device",
    "DoesNotFit",
    "PerfParams",
    "Throughput",
    "UnknownDevice",
    "UnknownModel",
    "Unsupported",
    "device",
    "model_shape",
    "load_params",
    "predict",
]
