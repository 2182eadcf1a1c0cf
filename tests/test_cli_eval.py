"""`tunelab reference ...` and `tunelab eval` in-process on a tiny Llama saved as a HF directory (the real loader)."""

import json
import time

import pytest
import tiny_lm
from cli_entry import run_main
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.interop import write_decoder_config
from tunelab.model_presets import model_preset

SMALL = ["--windows", "2", "--window-len", "64", "--prefill", "32"]
ONE_CONFIG = "error: give exactly one config: --config FILE, --preset NAME or --optimizations '...'\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tiny_lm.save(tmp_path_factory.mktemp("models") / "tiny-llama"))


@pytest.fixture
def refs(tmp_path):
    return ["--dir", str(tmp_path / "refs")]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_build_then_cache_hit_under_a_second(model_dir, refs):
    first = invoke("reference", "build", "--model", model_dir, *SMALL, *refs)
    assert first.exit_code == 0, first.output
    assert "built in" in first.output and "tiny-llama" in first.output and "2 x 64 tokens" in first.output
    start = time.perf_counter()
    second = invoke("reference", "build", "--model", model_dir, *SMALL, *refs)
    assert time.perf_counter() - start < 1.0
    assert second.exit_code == 0 and "cache hit" in second.output
    assert second.stdout.split()[1] == first.stdout.split()[1]  # the same key
    listing = invoke("reference", "show", *refs)
    assert listing.exit_code == 0 and "tiny-llama" in listing.output
    key = first.stdout.split()[1]
    shown = invoke("reference", "show", key[:8], *refs)
    assert shown.exit_code == 0 and json.loads(shown.stdout)["key"] == key


def test_corrupted_reference_is_one_line_and_force_rebuilds(model_dir, refs, tmp_path, monkeypatch, capsys):
    built = invoke("reference", "build", "--model", model_dir, *SMALL, *refs)
    key = built.stdout.split()[1]
    tensors = tmp_path / "refs" / f"{key}.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-50])
    code, out, err = run_main(monkeypatch, capsys, "reference", "build", "--model", model_dir, *SMALL, *refs)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"{key}.safetensors: truncated or modified" in err and "--force" in err
    forced = invoke("reference", "build", "--model", model_dir, *SMALL, *refs, "--force")
    assert forced.exit_code == 0 and "built in" in forced.output
    assert invoke("reference", "build", "--model", model_dir, *SMALL, *refs).output.count("cache hit") == 1


def test_eval_json_is_exactly_one_object(model_dir, refs):
    result = invoke("eval", "--model", model_dir, "--preset", "bf16", *SMALL, *refs, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing else on stdout
    for key in ("top1", "top5", "kl", "ppl", "top1_ci", "top5_ci", "n_positions", "model", "config_source"):
        assert key in data
    assert data["n_positions"] == 2 * 31 and data["n_windows"] == 2
    assert 0.8 <= data["top1"] <= 1 and data["top5"] >= data["top1"] and data["kl"] >= 0
    assert data["top1_ci"][0] <= data["top1"] <= data["top1_ci"][1]
    assert (
        data["config_source"] == "preset bf16"
        and data["accumulation"] == "fast"
        and data["lm_head"] == "bfp8"
    )
    assert data["reference"]["window_len"] == 64 and data["model"] == "tiny-llama"
    # the reference eval built is the one `reference build` finds
    hit = invoke("reference", "build", "--model", model_dir, *SMALL, *refs)
    assert "cache hit" in hit.output and data["reference"]["key"] in hit.output


def test_eval_table_with_an_optimizations_string(model_dir, refs):
    result = invoke(
        "eval", "--model", model_dir, *SMALL, *refs, "--lm-head", "bf16", "--accumulation", "exact",
        "--optimizations", "precision_cfg = {ff1_3: bfp4, ff2: bfp4}, fidelity_cfg = {li_ff1_3: lofi}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "top-1" in result.stdout and "95% interval" in result.stdout and "per window" in result.stdout


def test_refpt_export_import_and_eval(model_dir, refs, tmp_path):
    missing = invoke("reference", "export", "--model", model_dir, *SMALL, *refs, "-o", tmp_path / "x.refpt")
    assert "run `tunelab reference build" in str(missing.exception)
    assert invoke("reference", "build", "--model", model_dir, *SMALL, *refs).exit_code == 0
    exported = invoke("reference", "export", "--model", model_dir, *SMALL, *refs, "-o", tmp_path / "x.refpt")
    assert exported.exit_code == 0, exported.output
    imported = invoke("reference", "import", tmp_path / "x.refpt", "--model", model_dir, *refs)
    assert imported.exit_code == 0, imported.output
    key = imported.stdout.split()[1]
    result = invoke("eval", "--model", model_dir, "--preset", "accuracy", "--reference", key, *refs, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kl"] is None and data["n_positions"] == 31 and data["reference"]["origin"] == "refpt"
    direct = invoke(
        "eval", "--model", model_dir, "--preset", "accuracy", "--reference", tmp_path / "x.refpt", *refs
    )
    assert direct.exit_code == 0 and "n/a" in direct.stdout


def test_eval_errors_are_one_line(model_dir, refs, monkeypatch, capsys, tmp_path):
    config = tmp_path / "bf16.json"
    write_decoder_config(model_preset("bf16", "tiny-llama", 2), config)
    for sources in (
        [],
        ["--preset", "bf16", "--config", config],
        ["--preset", "bf16", "--optimizations", "x"],
    ):
        code, out, err = run_main(monkeypatch, capsys, "eval", "--model", model_dir, *refs, *sources)
        assert (code, out, err) == (2, "", ONE_CONFIG), sources
    code, _, err = run_main(
        monkeypatch, capsys, "eval", "--model", model_dir, "--preset", "bf16", "--accumulation", "slow"
    )
    assert code == 2 and "unknown --accumulation 'slow'" in err
    code, _, err = run_main(
        monkeypatch, capsys, "reference", "build", "--model", model_dir, "--corpus", "nope"
    )
    assert code == 2 and "unknown corpus 'nope'" in err


def test_run_takes_config_and_the_deprecated_json_file(model_dir, tmp_path, monkeypatch, capsys):
    config = tmp_path / "bf16.json"
    write_decoder_config(model_preset("bf16", "tiny-llama", 2), config)
    text = ("--text", "The lighthouse keeper climbed the stairs and lit the lamp", "--prefill", "4")
    code, new, err = run_main(monkeypatch, capsys, "run", "--model", model_dir, "--config", config, *text)
    assert code == 0 and "emulated bf16.json" in new and "warning" not in err
    code, old, err = run_main(monkeypatch, capsys, "run", "--model", model_dir, "--json", config, *text)
    assert code == 0 and old == new
    assert err == f"warning: --json {config} is deprecated; use --config {config}\n"
    code, out, err = run_main(
        monkeypatch, capsys, "run", "--model", model_dir, "--json", config, "--config", config, *text
    )
    assert (code, out, err) == (2, "", ONE_CONFIG)
