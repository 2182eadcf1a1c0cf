"""Interop with tt-transformers' config formats: decoder_config JSON, `--optimizations` strings, override files,
and the one-config-source rule every command follows (`resolve_config`)."""

from tunelab.interop.decoder_json import (
    DecoderConfigFile,
    Finding,
    parse_decoder_config,
    read_decoder_config,
    to_decoder_config,
    write_decoder_config,
)
from tunelab.interop.optimizations import parse_optimizations, to_optimizations
from tunelab.interop.sources import config_source, default_preset, resolve_config

__all__ = [
    "DecoderConfigFile",
    "Finding",
    "config_source",
    "default_preset",
    "parse_decoder_config",
    "parse_optimizations",
    "read_decoder_config",
    "resolve_config",
    "to_decoder_config",
    "to_optimizations",
    "write_decoder_config",
]
