"""Interop with tt-transformers' config formats: decoder_config JSON, `--optimizations` strings, override files."""

from tunelab.interop.decoder_json import (
    DecoderConfigFile,
    Finding,
    parse_decoder_config,
    read_decoder_config,
    to_decoder_config,
    write_decoder_config,
)
from tunelab.interop.optimizations import parse_optimizations, to_optimizations

__all__ = [
    "DecoderConfigFile",
    "Finding",
    "parse_decoder_config",
    "parse_optimizations",
    "read_decoder_config",
    "to_decoder_config",
    "to_optimizations",
    "write_decoder_config",
]
