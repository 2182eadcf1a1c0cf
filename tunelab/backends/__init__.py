"""Evaluation backends: `emulated` (Tenstorrent numerics on CPU/CUDA) and `tt_hardware` (tt-transformers on a device).

Submodules are imported on use, so the hardware runner does not load torch and the emulator does not need tt-metal.
"""
