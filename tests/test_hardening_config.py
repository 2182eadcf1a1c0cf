"""Hostile input to `tunelab config convert|validate|show`: every mistake is one `error:` line, exit 2, fast, and
leaves every stored file byte-identical."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_entry import assert_one_line_error, run_main, snapshot

from tunelab.errors import TunelabError
from tunelab.interop import parse_optimizations, write_decoder_config
from tunelab.precision import MAX_DECODERS, DecoderPrecision, ModelPrecision

CONFIGURATIONS = Path(__file__).parent / "configurations"
GOOD = "precision_cfg = {ff1_3: bfp4}, fidelity_cfg = {li_ff1_3: lofi}"


def fails(monkeypatch, capsys, root: Path, *args, mentions: tuple[str, ...] = ()) -> str:
    """Run `tunelab *args`; it must fail with one error line naming `mentions` and change nothing under `root`."""
    before = snapshot(root)
    line = assert_one_line_error(*run_main(monkeypatch, capsys, *args), *mentions)
    assert snapshot(root) == before
    return line


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def entry(**precision: str) -> dict:
    return {"precision_cfg": precision}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Tiny Hugging Face configs: a 2-decoder Llama (`llama/`) and a GPT-2 tunelab does not support (`gpt2/`)."""
    from transformers import GPT2Config, LlamaConfig

    root = tmp_path_factory.mktemp("models")
    llama = LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        architectures=["LlamaForCausalLM"],
    )
    llama.save_pretrained(root / "llama")
    GPT2Config(n_layer=2, n_embd=64, n_head=4).save_pretrained(root / "gpt2")
    return root


# 1. Output files are written atomically.


def test_failed_write_leaves_the_existing_output_unchanged(monkeypatch, capsys, tmp_path):
    out = write(tmp_path / "out.json", "old content\n")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    line = fails(
        monkeypatch, capsys, tmp_path,
        "config", "convert", "--preset", "performance", "--layers", "4", "-o", out,
        mentions=(str(out), "no space left"),
    )  # fmt: skip
    assert line == f"error: {out}: cannot write: No space left on device"


def test_file_size_limit_leaves_the_existing_output_unchanged(tmp_path):
    out = write(tmp_path / "out.json", "old content\n")
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        sys.argv = ["tunelab", "config", "convert", "--preset", "accuracy", "--layers", "32", "-o", {str(out)!r}]
        from tunelab.cli import main
        main()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert_one_line_error(result.returncode, result.stdout, result.stderr, str(out), "file too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert out.read_text() == "old content\n"


def test_library_writer_is_atomic(monkeypatch, tmp_path):
    out = write(tmp_path / "out.json", "old content\n")
    monkeypatch.setattr(
        os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EDQUOT, "Disk quota exceeded"))
    )
    with pytest.raises(TunelabError, match="cannot write: Disk quota exceeded"):
        write_decoder_config(ModelPrecision.uniform(DecoderPrecision(), 2), out)
    assert snapshot(tmp_path) == {str(out): b"old content\n"}


@pytest.mark.parametrize(
    ("target", "mention"),
    [
        ("missing/out.json", "directory"),
        (".", "is a directory"),
        ("fifo", "not a regular file"),
    ],
)
def test_output_that_cannot_be_a_file(monkeypatch, capsys, tmp_path, target, mention):
    os.mkfifo(tmp_path / "fifo")
    fails(
        monkeypatch, capsys, tmp_path,
        "config", "convert", "--preset", "performance", "--layers", "2", "-o", tmp_path / target,
        mentions=(mention,),
    )  # fmt: skip


# 2. Sizes are bounded before anything proportional to them is allocated.


def test_huge_decoder_id_is_refused_fast(monkeypatch, capsys, tmp_path):
    big = write(tmp_path / "big.json", json.dumps({"decoders": {"1000000000": entry()}}))
    start = time.perf_counter()
    line = fails(monkeypatch, capsys, tmp_path, "config", "validate", big, mentions=("1000000000", "1024"))
    assert time.perf_counter() - start < 5
    assert line == (
        f"error: {big}: decoder id '1000000000' is beyond the 1024 decoders tunelab supports "
        "(the largest supported model has 126)"
    )
    digits = write(tmp_path / "digits.json", '{"decoders": {"' + "9" * 5000 + '": {}}}')
    fails(
        monkeypatch,
        capsys,
        tmp_path,
        "config",
        "validate",
        digits,
        mentions=("'" + "9" * 36 + "...", "beyond"),
    )


def test_largest_decoder_id_is_accepted(monkeypatch, capsys, tmp_path):
    last = write(tmp_path / "last.json", json.dumps({"decoders": {str(MAX_DECODERS - 1): entry()}}))
    code, out, _ = run_main(monkeypatch, capsys, "config", "validate", last)
    assert code in (0, None) and out == f"ok: {last}: {MAX_DECODERS} decoders\n"


@pytest.mark.parametrize("command", ["convert", "show", "validate"])
@pytest.mark.parametrize("layers", ["100000000", "0", "-3"])
def test_layers_out_of_range_is_refused_fast(monkeypatch, capsys, tmp_path, command, layers):
    source = ["--preset", "performance"] if command != "validate" else [CONFIGURATIONS / "conf0.json"]
    start = time.perf_counter()
    line = fails(
        monkeypatch, capsys, tmp_path, "config", command, *source, "--layers", layers, mentions=("--layers",)
    )
    assert time.perf_counter() - start < 5
    expected = (
        "must be <= 1024 (the largest supported model has 126 decoders)" if layers[0] == "1" else ">= 1"
    )
    assert expected in line and line.endswith(f"got {layers}")


# 3. Deeply nested JSON.


@pytest.mark.parametrize("nested", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 100_000 + "1" + "}" * 100_000])
def test_deeply_nested_json(monkeypatch, capsys, tmp_path, nested):
    deep = write(tmp_path / "deep.json", nested)
    line = fails(monkeypatch, capsys, tmp_path, "config", "validate", deep)
    assert line == f"error: {deep}: nested too deeply (a decoder_config is 4 levels deep)"


# 4. --optimizations: tt-transformers finds its two sections anywhere and ignores the rest; tunelab does not.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD + " trailing {ff2: bf16}",
            "--optimizations: unknown section 'trailing' (expected precision_cfg and fidelity_cfg; "
            "tt-transformers ignores text outside its two sections)",
        ),
        (
            GOOD + "} {ff2: bf16}",
            "--optimizations: unexpected text '} {ff2: bf16}' at column 63 (expected precision_cfg = {...}, "
            "fidelity_cfg = {...}; tt-transformers ignores text outside its two sections)",
        ),
        (
            "precision_cfg = {ff1_3: bfp4, ff1_3: bf16}, fidelity_cfg = {li_ff2: lofi}",
            "--optimizations: precision_cfg: ff1_3 is given twice "
            "(tt-transformers would accept it and keep the last, bf16)",
        ),
        (
            "precision_cfg = {ff2: bfp4}, fidelity_cfg = {li_ff2: lofi, li_ff2: hifi4}",
            "--optimizations: fidelity_cfg: li_ff2 is given twice "
            "(tt-transformers would accept it and keep the last, hifi4)",
        ),
        (
            "xxprecision_cfg_yy = {ff1_3: bfp4}, fidelity_cfg = {li_ff2: lofi}",
            "--optimizations: unknown section 'xxprecision_cfg_yy' (expected precision_cfg and fidelity_cfg; "
            "tt-transformers would accept it as precision_cfg)",
        ),
        (
            GOOD + ", precision_cfg = {ff2: bf16}",
            "--optimizations: precision_cfg is given twice (tt-transformers would accept it and use the first)",
        ),
        (
            "precision_cfg = {ff1_3: bfp4, ff2: bf8}, fidelity_cfg = {li_ff2: lofi}",
            "--optimizations: precision_cfg: ff2: invalid value 'bf8' (expected one of bfp4, bfp8, bf16, mixed)",
        ),
        (
            "precision_cfg = {ff1_3: " + "x" * 100_000 + "}, fidelity_cfg = {li_ff2: lofi}",
            "--optimizations: precision_cfg: ff1_3: invalid value '" + "x" * 36 + "... "
            "(expected one of bfp4, bfp8, bf16, mixed)",
        ),
    ],
)
def test_optimizations_strings_tt_transformers_would_misread(monkeypatch, capsys, tmp_path, text, expected):
    line = fails(monkeypatch, capsys, tmp_path, "config", "convert", "--optimizations", text, "--layers", "2")
    assert line == f"error: {expected}"


def test_optimizations_sections_in_either_order_still_parse():
    swapped = "fidelity_cfg = {li_ff1_3: lofi}, precision_cfg = {ff1_3: bfp4}"
    assert parse_optimizations(swapped) == parse_optimizations(GOOD)


# 5. Malformed or partial decoder_config files, and models that do not fit.


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"decoders": {"0": {"precision_cfg": {', "malformed JSON: Expecting property name enclosed in double "
         "quotes at line 1 column 39 (the file ends early: is it truncated?)"),
        ("[1, 2]", 'top level must be an object with a "decoders" key, found a list'),
        ('"decoders"', 'top level must be an object with a "decoders" key, found \'decoders\''),
        ('{"layers": {}}', "top level must be an object with a \"decoders\" key, found an object with keys 'layers'"),
        ('{"decoders": [1]}', '"decoders" must be a non-empty object of decoder ids, found a list'),
        ('{"decoders": {"x": {}}}', "decoder id 'x' is not an integer"),
        ('{"decoders": {"1.5": {}}}', "decoder id '1.5' is not an integer"),
        ('{"decoders": {"-1": {}}}', "decoder id '-1' is negative (tt-transformers would accept it as decoder -1)"),
        ('{"decoders": {" 1": {}}}', "decoder id ' 1' is not written as plain digits (tt-transformers would "
         "accept it as decoder 1)"),
        ('{"decoders": {"\u0663": {}}}', "decoder id '\u0663' is not written as plain digits (tt-transformers "
         "would accept it as decoder 3)"),
        ('{"decoders": {"0": {"precision_cfg": {}}, "0": {}}}', "key '0' appears twice in one object "
         "(tt-transformers would silently keep the last)"),
        ('{"decoders": {"1": {"precision_cfg": {}}, "01": {}}}', "decoder 1: listed twice (tt-transformers "
         "would keep the last)"),
        ('{"decoders": {"0": {"precision_cfg": {"WO": "BFP4", "WO": "BF16"}}}}', "key 'WO' appears twice"),
        ('{"decoders": {"0": {}}, "extra": 1}', "unknown top-level key 'extra' (expected only \"decoders\"; "
         "tt-transformers would ignore it)"),
        ('{"decoders": {"0": {"precision": {}}}}', "decoder 0: unknown key 'precision' (expected precision_cfg, "
         "fidelity_cfg; tt-transformers would ignore it)"),
        ('{"decoders": {"0": {"precision_cfg": {"WO": "BFP2"}}}}', "decoder 0: precision_cfg: WO: invalid value "
         "'BFP2' (expected one of BFP4, BFP8, BF16)"),
        ('{"decoders": {"0": {"precision_cfg": {"WO": "bfp4"}}}}', "decoder 0: precision_cfg: WO: invalid value "
         "'bfp4' (expected one of BFP4, BFP8, BF16); JSON uses upper-case names"),
        ('{"decoders": {"0": {"fidelity_cfg": {"LI_FF2": "HIFI3"}}}}', "decoder 0: fidelity_cfg: LI_FF2: invalid "
         "value 'HIFI3' (expected one of LOFI, HIFI2, HIFI2_NA, HIFI2_FP16, HIFI2_NOL1ACC, HIFI4, HIFI4_FP32)"),
        ('{"decoders": {"0": {"precision_cfg": {"FF3": "BFP4"}}}}', "decoder 0: precision_cfg: unknown key 'FF3' "
         "(expected one of FF1_FF3, FF2, WQKV, WO, KV_CACHE, ACTIVATION)"),
        ('{"decoders": {"0": {"fidelity_cfg": {"li_ff2": "LOFI"}}}}', "decoder 0: fidelity_cfg: unknown key "
         "'li_ff2' (expected one of LI_FF1_FF3, LI_FF2, LI_QKV_DECODE, LI_O_DECODE, SDPA_DECODE, LI_QKV_PREFILL, "
         "LI_O_PREFILL, SDPA_PREFILL, ACCURACY; JSON uses upper-case names)"),
        ('{"decoders": {"0": {"precision_cfg": []}}}', "decoder 0: precision_cfg: must be an object of "
         "TensorGroup names, found a list"),
        ('{"decoders": {"0": {"fidelity_cfg": {}}}}', "decoder 0 has no precision_cfg: tt-transformers "
         "substitutes the preset's, whose ACTIVATION is None, and raises ValueError"),
    ],
)  # fmt: skip
def test_malformed_decoder_config(monkeypatch, capsys, tmp_path, content, expected):
    path = write(tmp_path / "bad.json", content)
    line = fails(monkeypatch, capsys, tmp_path, "config", "validate", path)
    assert line.startswith(f"error: {path}: {expected}"), line


@pytest.mark.parametrize("command", ["convert", "show"])
def test_the_config_commands_read_files_alike(monkeypatch, capsys, tmp_path, command):
    path = write(tmp_path / "bad.json", '{"decoders": {"0": {"precision_cfg": {"WO": true}}}}')
    line = fails(monkeypatch, capsys, tmp_path, "config", command, "--config", path)
    expected = "decoder 0: precision_cfg: WO: invalid value true (expected one of BFP4, BFP8, BF16)"
    assert line == f"error: {path}: {expected}"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("binary.json", b"\x89PNG\r\n\x1a\n\x00\x00\xff", "is not UTF-8 text (byte 0x89 at offset 0); "
         "expected a decoder_config JSON file"),
        ("latin1.json", '{"decoders": {"é": {}}}'.encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 15)"),
        ("empty.json", b"", "is empty (expected a decoder_config JSON object)"),
        ("blank.json", b"  \n\n", "is empty (expected a decoder_config JSON object)"),
        ("bom.json", b'\xef\xbb\xbf{"decoders": {}}', "malformed JSON: Unexpected UTF-8 BOM"),
    ],
)  # fmt: skip
def test_files_that_are_not_json_text(monkeypatch, capsys, tmp_path, name, content, expected):
    path = write(tmp_path / name, content)
    line = fails(monkeypatch, capsys, tmp_path, "config", "validate", path)
    assert line.startswith(f"error: {path}: {expected}"), line


def test_paths_that_are_not_decoder_config_files(monkeypatch, capsys, tmp_path):
    line = fails(monkeypatch, capsys, tmp_path, "config", "validate", tmp_path)
    assert line == f"error: {tmp_path}: is a directory, not a decoder_config JSON file"
    line = fails(monkeypatch, capsys, tmp_path, "config", "show", "--config", tmp_path / "missing.json")
    assert line == f"error: {tmp_path / 'missing.json'}: file not found (expected a decoder_config JSON file)"
    sparse = tmp_path / "huge.json"
    with sparse.open("wb") as f:
        f.truncate(17 * 1024 * 1024)
    line = fails(monkeypatch, capsys, tmp_path, "config", "validate", sparse)
    assert line == f"error: {sparse}: is larger than 16777216 bytes, too large for a decoder_config JSON file"


def test_layer_count_that_does_not_match_the_model(monkeypatch, capsys, tmp_path, models):
    one = write(tmp_path / "one.json", json.dumps({"decoders": {"0": entry()}}))
    line = fails(monkeypatch, capsys, tmp_path, "config", "validate", one, "--model", models / "llama")
    assert line == (
        f"error: {one}: covers decoders 0..0 but the model has 2: tt-transformers raises KeyError for decoders 1..1"
    )
    line = fails(
        monkeypatch, capsys, tmp_path, "config", "validate", CONFIGURATIONS / "conf0.json", "--layers", "32"
    )
    assert "covers decoders 0..15 but the model has 32" in line
    line = fails(
        monkeypatch, capsys, tmp_path,
        "config", "convert", "--preset", "performance", "--model", models / "llama", "--layers", "3",
    )  # fmt: skip
    assert line == "error: --layers 3 does not match the model: llama has 2 decoders"
    line = fails(
        monkeypatch, capsys, tmp_path,
        "config", "show", "--preset", "accuracy", "--model", "Llama-3.1-8B-Instruct", "--layers", "33",
    )  # fmt: skip
    assert line == "error: --layers 33 does not match the model: Llama-3.1-8B-Instruct has 32 decoders"


def test_a_known_model_gives_the_layer_count(monkeypatch, capsys, models):
    code, out, err = run_main(
        monkeypatch, capsys, "config", "convert", "--preset", "bf16", "--model", models / "llama"
    )
    assert code in (0, None) and err == "" and list(json.loads(out)["decoders"]) == ["0", "1"]


def test_unsupported_architecture(monkeypatch, capsys, tmp_path, models):
    line = fails(
        monkeypatch,
        capsys,
        tmp_path,
        "config",
        "convert",
        "--preset",
        "performance",
        "--model",
        models / "gpt2",
    )
    assert line == (
        "error: gpt2: unsupported model_type gpt2 (supported: LlamaForCausalLM, "
        "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM)"
    )


@pytest.mark.parametrize(
    ("config", "mentions"),
    [
        (
            {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 10**9},
            ("num_hidden_layers", "<= 1024"),
        ),
        (
            {"model_type": "bert", "num_hidden_layers": 2},
            ("unsupported model_type bert",),
        ),
        (
            {"architectures": "LlamaForCausalLM", "num_hidden_layers": True},
            ("num_hidden_layers must be an integer",),
        ),
    ],
)
def test_model_configs_that_cannot_be_used(monkeypatch, capsys, tmp_path, config, mentions):
    (tmp_path / "m").mkdir()
    write(tmp_path / "m" / "config.json", json.dumps(config))
    conf0 = CONFIGURATIONS / "conf0.json"
    fails(
        monkeypatch,
        capsys,
        tmp_path,
        "config",
        "validate",
        conf0,
        "--model",
        tmp_path / "m",
        mentions=mentions,
    )


# 6. Other hostile input.


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("NaN", "malformed JSON: NaN is not a JSON value"),
        ("-Infinity", "malformed JSON: -Infinity is not a JSON value"),
        ("1e999", "WO: invalid value inf"),
        ("1" + "0" * 5000, "malformed JSON: a number has too many digits"),
        ("12345678901234567890", "WO: invalid value a very large integer"),
        ("null", "WO: invalid value null"),
        ('{"BFP4": 1}', "WO: invalid value an object"),
        ('"' + "B" * 100_000 + '"', "WO: invalid value '" + "B" * 36 + "... (expected"),
        ('"BFP4\\u0000"', "WO: invalid value 'BFP4?'"),
    ],
)  # fmt: skip
def test_hostile_values(monkeypatch, capsys, tmp_path, value, shown):
    path = write(tmp_path / "v.json", '{"decoders": {"0": {"precision_cfg": {"WO": ' + value + "}}}}")
    line = fails(monkeypatch, capsys, tmp_path, "config", "validate", path)
    assert shown in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--preset", "x" * 1000, "--layers", "2"],
         "unknown preset '" + "x" * 36 + "... (expected one of performance, accuracy, defaults, bf16)"),
        (["--preset", "performance", "--layers", "2", "--to", "y" * 500],
         "unknown --to '" + "y" * 36 + "... (expected json or optimizations)"),
        (["--preset", "performance", "--layers", "2", "--model", "m" * 300],
         "model name '" + "m" * 36 + "... cannot name a model (expected a Hugging Face model name or its directory "
         "name, at most 255 printable characters)"),
        (["--preset", "performance", "--layers", "2", "--model", "a\nb"], "model name 'a?b' cannot name a model"),
        (["--config", CONFIGURATIONS / "conf0.json", "--default", "z" * 100],
         "unknown --default '" + "z" * 36 + "... (expected performance or accuracy)"),
    ],
)  # fmt: skip
def test_hostile_options(monkeypatch, capsys, tmp_path, args, expected):
    line = fails(monkeypatch, capsys, tmp_path, "config", "convert", *args)
    assert line.startswith(f"error: {expected}"), line


def test_very_long_config_path(monkeypatch, capsys, tmp_path):
    long_path = tmp_path / ("f" * 256)  # one more than a file name may have
    line = fails(monkeypatch, capsys, tmp_path, "config", "validate", long_path)
    assert "cannot read: File name too long" in line
