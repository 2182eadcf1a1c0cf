"""Performance: the Tenstorrent device catalog, tt-transformers' support rules and the calibrated throughput model.

`predict(model, precision, device)` gives a modelled `Throughput` (decode tok/s/user, TTFT) from a model's shapes
(`tunelab.models.model_shape`) alone; `tunelab.backends.tt_hardware` gives measured ones on a device.
`tunelab.perf.calibration` refits the model's free parameters on tt-transformers' PERF.md numbers.
"""

from tunelab.perf.devices import DEVICES, Device, UnknownDevice, device
from tunelab.perf.support import Unsupported
from tunelab.perf.throughput import DoesNotFit, PerfParams, Throughput, load_params, memory_per_chip, predict

__all__ = [
    "DEVICES",
    "Device",
    "DoesNotFit",
    "PerfParams",
    "Throughput",
    "UnknownDevice",
    "Unsupported",
    "device",
    "load_params",
    "memory_per_chip",
    "predict",
]
