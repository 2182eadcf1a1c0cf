"""`tunelab perf predict | calibrate | measure` as a user runs them (in-process through the console entry point)."""

import json
from importlib import resources

from test_throughput_models import run

from tunelab.interop import write_decoder_config
from tunelab.model_presets import model_preset


def test_predict_prints_speed_ttft_and_terms(monkeypatch, capsys):
    status, out, _ = run(
        monkeypatch, capsys, "perf", "predict", "--model", "Llama-3.1-8B-Instruct", "--mesh-device", "N150",
        "--preset", "performance",
    )  # fmt: skip
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "Llama-3.1-8B-Instruct on N150, performance preset, batch 1, 512 tokens (modelled)"
    assert lines[1].startswith("decode  ") and "tok/s/user" in lines[1] and "weights" in lines[1]
    assert lines[2].startswith("TTFT    ") and lines[2].endswith(" ms")


def test_predict_from_a_config_file_and_a_config_json(monkeypatch, capsys, tmp_path):
    model_dir = tmp_path / "Llama-3.2-1B-Instruct"
    model_dir.mkdir()
    known = json.loads(resources.files("tunelab.models").joinpath("data/model_configs.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(known["meta-llama/Llama-3.2-1B"]))
    config = tmp_path / "perf.json"
    write_decoder_config(model_preset("performance", "Llama-3.2-1B-Instruct", 16), config)
    by_file = run(
        monkeypatch, capsys, "perf", "predict", "--model", str(model_dir), "--mesh-device", "N150", "--config",
        str(config), "--json",
    )  # fmt: skip
    by_preset = run(
        monkeypatch, capsys, "perf", "predict", "--model", "meta-llama/Llama-3.2-1B", "--mesh-device", "N150",
        "--preset", "performance", "--json",
    )  # fmt: skip
    assert by_file[0] == by_preset[0] == 0
    file_result, preset_result = json.loads(by_file[1]), json.loads(by_preset[1])
    assert file_result["model"] == "Llama-3.2-1B-Instruct"
    assert file_result["tok_s_u"] == preset_result["tok_s_u"]
    assert file_result["inputs"]["config"] == str(config)


def test_errors_are_one_line_with_status_2(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("MESH_DEVICE", raising=False)
    short = tmp_path / "short.json"
    write_decoder_config(model_preset("performance", "Llama-3.2-1B", 8), short)
    cases = {
        ("--model", "meta-llama/Llama-3.1-70B", "--mesh-device", "N150", "--preset", "performance"): (
            "error: tt-transformers does not run Llama-3.1-70B on N150"
        ),
        ("--model", "meta-llama/Llama-3.2-1B", "--mesh-device", "N999", "--preset", "performance"): (
            "error: unknown device 'N999'"
        ),
        ("--model", "no-such/Model-1B", "--mesh-device", "N150", "--preset", "performance"): (
            "error: unknown model 'no-such/Model-1B'"
        ),
        ("--model", "meta-llama/Llama-3.2-1B", "--mesh-device", "N150"): (
            "error: give exactly one config: --config FILE, --preset NAME or --optimizations '...'"
        ),
        (
            "--model",
            "meta-llama/Llama-3.2-1B",
            "--mesh-device",
            "N150",
            "--preset",
            "x",
            "--config",
            str(short),
        ): ("error: give exactly one config: --config FILE, --preset NAME or --optimizations '...'"),
        (
            "--model",
            "meta-llama/Llama-3.2-1B",
            "--mesh-device",
            "N150",
            "--preset",
            "bf16",
            "--lm-head",
            "fp8",
        ): ("error: unknown --lm-head 'fp8' (expected bfp8 or bf16)"),
        ("--model", "meta-llama/Llama-3.2-1B", "--mesh-device", "N150", "--config", str(short)): (
            f"error: {short}: covers decoders 0..7 but the model has 16"
        ),
    }
    for args, start in cases.items():
        status, out, err = run(monkeypatch, capsys, "perf", "predict", *args)
        assert status == 2 and out == "", args
        assert err.startswith(start) and err.count("\n") == 1, err


def test_mesh_device_defaults_to_the_mesh_device_variable(monkeypatch, capsys):
    args = ("perf", "predict", "--model", "meta-llama/Llama-3.2-1B", "--preset", "performance", "--json")
    monkeypatch.setenv("MESH_DEVICE", "N300")
    status, out, err = run(monkeypatch, capsys, *args)
    assert status == 0 and err == "" and json.loads(out)["device"] == "N300"
    status, out, _ = run(monkeypatch, capsys, *args, "--mesh-device", "N150")  # the option wins
    assert status == 0 and json.loads(out)["device"] == "N150"
    monkeypatch.delenv("MESH_DEVICE")
    status, out, err = run(monkeypatch, capsys, *args)
    assert status == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: give --mesh-device NAME or set MESH_DEVICE (one of N150, N300, T3K")


def test_device_is_a_deprecated_spelling_of_mesh_device(monkeypatch, capsys):
    monkeypatch.delenv("MESH_DEVICE", raising=False)
    args = ("perf", "predict", "--model", "meta-llama/Llama-3.2-1B", "--preset", "performance", "--json")
    status, old, err = run(monkeypatch, capsys, *args, "--device", "N150")
    assert status == 0
    assert err == "warning: --device N150 is deprecated for Tenstorrent systems; use --mesh-device N150\n"
    status, new, err = run(monkeypatch, capsys, *args, "--mesh-device", "N150")
    assert status == 0 and err == "" and old == new
    status, out, _ = run(monkeypatch, capsys, "perf", "predict", "--help")
    assert "--mesh-device" in out and "--device" not in out.replace("--mesh-device", "")


def test_lm_head_bf16_predicts_slower_decode(monkeypatch, capsys):
    args = (
        "perf",
        "predict",
        "--model",
        "Llama-3.1-8B-Instruct",
        "--mesh-device",
        "N150",
        "--preset",
        "performance",
    )
    status, bfp8, _ = run(monkeypatch, capsys, *args, "--json")
    status16, bf16, _ = run(monkeypatch, capsys, *args, "--json", "--lm-head", "bf16")
    assert status == status16 == 0
    assert json.loads(bf16)["tok_s_u"] < json.loads(bfp8)["tok_s_u"]
    assert json.loads(bf16)["inputs"]["lm_head"] == "bf16"
    _, text, _ = run(monkeypatch, capsys, *args, "--lm-head", "bf16")
    assert text.splitlines()[0] == (
        "Llama-3.1-8B-Instruct on N150, performance preset, bf16 LM head, batch 1, 512 tokens (modelled)"
    )


def test_calibrate_writes_params_and_prints_the_fit_error(monkeypatch, capsys, tmp_path):
    target = tmp_path / "params.json"
    status, out, _ = run(monkeypatch, capsys, "perf", "calibrate", "-o", str(target))
    assert status == 0
    written = json.loads(target.read_text())
    assert set(written) == {"params", "fit_error", "calibration"}
    assert "fit tok_s_u: median" in out and "fit ttft_ms: median" in out
    status, out, _ = run(
        monkeypatch, capsys, "perf", "predict", "--model", "meta-llama/Llama-3.2-1B", "--mesh-device", "N150",
        "--preset", "performance", "--params", str(target), "--json",
    )  # fmt: skip
    assert status == 0 and json.loads(out)["tok_s_u"] > 0


def test_measure_refuses_without_hardware(monkeypatch, capsys):
    monkeypatch.delenv("TT_METAL_HOME", raising=False)
    status, out, err = run(
        monkeypatch, capsys, "perf", "measure", "--model", "meta-llama/Llama-3.2-1B", "--mesh-device", "N150",
        "--preset", "performance",
    )  # fmt: skip
    assert status == 2 and out == ""
    assert err.startswith("error: no Tenstorrent hardware: ") and err.count("\n") == 1
