"""`tunelab config` through the installed console script, as a user runs it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGURATIONS = Path(__file__).parent / "configurations"


def tunelab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("tunelab", path=str(Path(sys.executable).parent)) or "tunelab"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_convert_performance_preset_for_llama_8b(tmp_path):
    out = tmp_path / "perf.json"
    result = tunelab(
        "config", "convert", "--preset", "performance", "--model", "Llama-3.1-8B-Instruct", "--layers", "32",
        "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    decoders = json.loads(out.read_text())["decoders"]
    assert len(decoders) == 32
    assert all(len(d["precision_cfg"]) == 5 and len(d["fidelity_cfg"]) == 9 for d in decoders.values())
    assert decoders["31"]["precision_cfg"]["FF1_FF3"] == "BFP8"
    assert decoders["30"]["precision_cfg"]["FF1_FF3"] == "BFP4"
    validated = tunelab("config", "validate", str(out), "--layers", "32")
    assert validated.returncode == 0 and "ok:" in validated.stdout and validated.stderr == ""


def test_uniform_config_round_trips_json_optimizations_json(tmp_path):
    first = tmp_path / "a.json"
    result = tunelab("config", "convert", "--config", str(CONFIGURATIONS / "conf0.json"), "-o", str(first))
    assert result.returncode == 0, result.stderr
    text = tunelab("config", "convert", "--config", str(first), "--to", "optimizations")
    assert text.returncode == 0 and text.stdout.startswith("precision_cfg = {ff1_3: bfp8")
    second = tmp_path / "b.json"
    result = tunelab(
        "config", "convert", "--optimizations", text.stdout.strip(), "--layers", "16", "-o", str(second)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(first.read_text()) == json.loads(second.read_text())


def test_non_uniform_config_refuses_optimizations_output():
    result = tunelab(
        "config", "convert", "--config", str(CONFIGURATIONS / "conf1.json"), "--to", "optimizations"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: decoder 14 differs from decoder 0: an --optimizations string sets every decoder alike; use --to json"
    )


def test_validate_malformed_file_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"decoders": {"0": {}, "7": {"fidelity_cfg": {"LI_FF2": "HIFI3"}}}}))
    result = tunelab("config", "validate", str(bad), "--layers", "8")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: {bad}: decoder 7: fidelity_cfg: LI_FF2: invalid value 'HIFI3' "
        "(expected one of LOFI, HIFI2, HIFI2_NA, HIFI2_FP16, HIFI2_NOL1ACC, HIFI4, HIFI4_FP32)"
    ]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = tunelab("config", "validate", str(broken))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {broken}: malformed JSON")


def test_validate_reports_layer_mismatch(tmp_path):
    result = tunelab("config", "validate", str(CONFIGURATIONS / "conf2.json"), "--layers", "32")
    assert result.returncode == 2
    assert "KeyError for decoders 16..31" in result.stderr
    result = tunelab("config", "validate", str(CONFIGURATIONS / "conf2.json"), "--layers", "12")
    assert result.returncode == 0
    assert (
        "warning:" in result.stderr
        and "decoder ids 12-15 are beyond the model's 12 decoders" in result.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "performance"], "error: --preset needs --layers"),
        (["--preset", "turbo", "--layers", "2"], "error: unknown preset 'turbo'"),
        (
            ["--layers", "2"],
            "error: give exactly one config: --config FILE, --preset NAME or --optimizations",
        ),
        (
            ["--preset", "accuracy", "--config", str(CONFIGURATIONS / "conf0.json"), "--layers", "16"],
            "error: give exactly one config",
        ),
        (
            ["--optimizations", "precision_cfg = {wo: bfp4}", "--layers", "2"],
            "error: --optimizations: fidelity_cfg is",
        ),
        (["--preset", "accuracy", "--layers", "2", "--to", "yaml"], "error: unknown --to 'yaml'"),
    ],
)
def test_convert_errors(args, message):
    result = tunelab("config", "convert", *args)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr


def test_json_file_is_a_deprecated_spelling_of_config(tmp_path):
    conf0 = CONFIGURATIONS / "conf0.json"
    old = tunelab("config", "convert", "--json", str(conf0), "--to", "optimizations")
    new = tunelab("config", "convert", "--config", str(conf0), "--to", "optimizations")
    assert old.returncode == new.returncode == 0 and old.stdout == new.stdout
    assert old.stderr == f"warning: --json {conf0} is deprecated; use --config {conf0}\n"
    assert new.stderr == ""
    assert "--json" not in tunelab("config", "convert", "--help").stdout  # hidden


def test_show_prints_a_row_per_decoder():
    result = tunelab("config", "show", str(CONFIGURATIONS / "conf3.json"))
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 16
    assert rows[9].split("│")[1].strip() == "9" and "bfp8" in rows[9]
    assert rows[10].split("│")[2].strip() == "bfp4"
