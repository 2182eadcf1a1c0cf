"""The tt-transformers hardware runner without hardware: detection, command lines, log parsing, retry on failure."""

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunelab.backends import tt_hardware
from tunelab.backends.tt_hardware import (
    ACCURACY_TEST,
    DEMO,
    HardwareRunFailed,
    HardwareUnavailable,
    TTHardware,
    accuracy_job,
    detect_tt_metal,
    parse_accuracy,
    parse_speed,
    speed_job,
)
from tunelab.model_presets import model_preset
from tunelab.perf.devices import device

# simple_text_demo.py output (loguru), batch-1, Llama-3.1-8B-Instruct on N150: per-iteration lines, then the summary.
DEMO_LOG = """\
2025-06-03 14:20:41.118 | INFO     | models.tt_transformers.tt.model_config:__init__:612 - Loading decoder config from /tmp/run/config-0000.json
2025-06-03 14:20:58.903 | INFO     | models.tt_transformers.demo.simple_text_demo:test_demo_text:873 - Starting prefill warmup...
2025-06-03 14:21:03.412 | INFO     | models.tt_transformers.demo.simple_text_demo:test_demo_text:925 - Prefill finished
2025-06-03 14:21:03.977 | INFO     | models.tt_transformers.demo.simple_text_demo:test_demo_text:1012 - Iteration 0: 9032.17ms @ 0.11 tok/s/user (0.11 tok/s throughput)
2025-06-03 14:21:04.013 | INFO     | models.tt_transformers.demo.simple_text_demo:test_demo_text:1012 - Iteration 1: 35.41ms @ 28.24 tok/s/user (28.24 tok/s throughput)
2025-06-03 14:21:11.102 | INFO     | models.tt_transformers.demo.simple_text_demo:test_demo_text:1012 - Iteration 199: 35.29ms @ 28.34 tok/s/user (28.34 tok/s throughput)
2025-06-03 14:21:11.205 | INFO     | models.tt_transformers.demo.simple_text_demo:test_demo_text:1131 - === Performance metrics ===
2025-06-03 14:21:11.205 | INFO     | models.tt_transformers.demo.simple_text_demo:test_demo_text:1133 - 1st token decode time: 9032.17ms
2025-06-03 14:21:11.205 | INFO     | models.tt_transformers.demo.simple_text_demo:test_demo_text:1134 - Average Time to First Token (TTFT): 104.23ms
2025-06-03 14:21:11.206 | INFO     | models.tt_transformers.demo.simple_text_demo:test_demo_text:1135 - Average speed: 35.34ms @ 28.30 tok/s/user (28.30 tok/s throughput)
PASSED
"""
# tests/test_accuracy.py output: per-segment lines, the total, then the summary line `lt` parses.
ACCURACY_LOG = """\
2025-06-03 14:40:02.551 | INFO     | models.tt_transformers.tests.test_accuracy:test_tt_model_acc:288 - Tokens 0-100: Top-1 accuracy: 91 %, Top-5 accuracy: 98 %
2025-06-03 14:40:02.552 | INFO     | models.tt_transformers.tests.test_accuracy:test_tt_model_acc:288 - Tokens 500-511: Top-1 accuracy: 82 %, Top-5 accuracy: 100 %
2025-06-03 14:40:02.553 | INFO     | models.tt_transformers.tests.test_accuracy:test_tt_model_acc:295 - Total tokens 511: Top-1 accuracy: 90.4 %, Top-5 accuracy: 97.3 %
2025-06-03 14:40:02.553 | INFO     | models.tt_transformers.tests.test_accuracy:test_tt_model_acc:300 - Top-1: 90% | Top-5: 97%
PASSED
"""
# simple_text_demo.py --token_accuracy (ci-token-matching) prints another format.
DEMO_ACCURACY_LOG = """\
2025-06-03 15:02:17.330 | INFO     | models.tt_transformers.demo.simple_text_demo:test_demo_text:1098 - Top1 Accuracy: 89.80%, Top5 Accuracy: 97.40%
"""


def test_parse_demo_speed_takes_the_average_line_and_ttft():
    assert parse_speed(DEMO_LOG) == (28.30, 104.23)
    assert parse_speed("... - Average speed: 35.34ms @ 28.30 tok/s/user (28.30 tok/s throughput)") == (
        28.3,
        None,
    )
    with pytest.raises(HardwareRunFailed, match="no '@ X tok/s/user' line"):
        parse_speed(ACCURACY_LOG)


def test_parse_accuracy_both_formats():
    assert parse_accuracy(ACCURACY_LOG) == (90.0, 97.0)
    assert parse_accuracy(DEMO_ACCURACY_LOG) == (89.8, 97.4)
    with pytest.raises(HardwareRunFailed):
        parse_accuracy(DEMO_LOG)


def test_speed_job_command_line_and_environment(tmp_path):
    root, config = tmp_path / "tt-metal", tmp_path / "config.json"
    job = speed_job(root, "meta-llama/Llama-3.1-8B-Instruct", device("N150"), config)
    assert job.argv[1:] == (
        "-m", "pytest", DEMO, "-k", "performance and batch-1", "--decoder_config_file", str(config),
        "--timeout", str(round(job.timeout_s)),
    )  # fmt: skip
    assert job.cwd == root and job.timeout_s > 0
    assert job.env["HF_MODEL"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert job.env["MESH_DEVICE"] == "N150" and job.env["TT_METAL_HOME"] == str(root)
    assert job.env["WH_ARCH_YAML"] == "wormhole_b0_80_arch_eth_dispatch.yaml"
    assert "performance and batch-32" in speed_job(root, "m", device("T3K"), config, batch=32).argv
    sixteen = speed_job(root, "m", device("T3K"), config, batch=16).argv
    assert sixteen[-2:] == ("--batch_size", "16") and "performance and batch-1" in sixteen


def test_jobs_pass_an_absolute_config_path_since_pytest_runs_from_the_tt_metal_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = Path("tt_runs") / "config-0000.json"
    for job in (
        speed_job(tmp_path / "tt-metal", "m", device("N150"), relative),
        accuracy_job(tmp_path / "tt-metal", "m", device("N150"), relative),
    ):
        given = Path(job.argv[job.argv.index("--decoder_config_file") + 1])
        assert given.is_absolute() and given == tmp_path / relative


def test_accuracy_job_command_line_and_galaxy_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("WH_ARCH_YAML", raising=False)
    job = accuracy_job(tmp_path, "meta-llama/Llama-3.1-70B", device("Galaxy"), tmp_path / "c.json")
    assert job.argv[3:] == (
        ACCURACY_TEST,
        "-k",
        "performance and file",
        "--decoder_config_file",
        str(tmp_path / "c.json"),
        "--timeout",
        "3600",
    )
    assert job.env["MESH_DEVICE"] == "TG" and "WH_ARCH_YAML" not in job.env


def test_detect_refuses_in_one_line_naming_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(tt_hardware, "_find_spec", lambda name: None)
    with pytest.raises(HardwareUnavailable, match=r"^no Tenstorrent hardware: TT_METAL_HOME is unset") as exc:
        detect_tt_metal({}, tmp_path)
    assert "\n" not in str(exc.value)
    home = tmp_path / "tt-metal"
    (home / "models" / "tt_transformers").mkdir(parents=True)
    with pytest.raises(HardwareUnavailable, match="ttnn is not importable"):
        detect_tt_metal({"TT_METAL_HOME": str(home)}, tmp_path / "dev")
    monkeypatch.setattr(tt_hardware, "_find_spec", lambda name: SimpleNamespace())
    devices = tmp_path / "dev"
    devices.mkdir()
    with pytest.raises(HardwareUnavailable, match="no device under"):
        detect_tt_metal({"TT_METAL_HOME": str(home)}, devices)
    (devices / "0").touch()
    assert detect_tt_metal({"TT_METAL_HOME": str(home)}, devices) == home


class FakeMachine:
    """Stands in for subprocess.run: replays outcomes per job kind and records every command."""

    def __init__(self, demo: list, accuracy: list):
        self.outcomes = {"demo": demo, "accuracy": accuracy}
        self.calls: list[list[str]] = []

    def __call__(self, argv, **kwargs):
        self.calls.append(argv)
        if argv[0] == "tt-smi":
            return subprocess.CompletedProcess(argv, 0, "", "")
        outcome = self.outcomes["demo" if DEMO in argv else "accuracy"].pop(0)
        if outcome == "timeout":
            raise subprocess.TimeoutExpired(argv, kwargs["timeout"], output=b"partial output")
        code, log = outcome
        return subprocess.CompletedProcess(argv, code, log, "")


def test_evaluate_retries_once_after_a_device_reset(tmp_path):
    machine = FakeMachine(
        demo=[(1, "RuntimeError: device hang"), (0, DEMO_LOG)], accuracy=["timeout", (0, ACCURACY_LOG)]
    )
    hardware = TTHardware(
        "meta-llama/Llama-3.1-8B-Instruct", device("N150"), tmp_path, root=tmp_path, execute=machine
    )
    result = hardware.evaluate(model_preset("performance", "Llama-3.1-8B-Instruct", 32))
    assert [call[0] for call in machine.calls].count("tt-smi") == 2
    assert machine.calls[1] == ["tt-smi", "-r"]
    assert result.throughput.kind == "measured" and result.throughput.model == "Llama-3.1-8B-Instruct"
    assert (result.throughput.tok_s_u, result.throughput.ttft_ms, result.top1, result.top5) == (
        28.3,
        104.23,
        90,
        97,
    )
    assert all(Path(log).is_file() for log in result.logs)
    config_file = Path(machine.calls[0][machine.calls[0].index("--decoder_config_file") + 1])
    assert config_file.is_file() and '"31"' in config_file.read_text()


def test_evaluate_fails_in_one_line_after_the_retry(tmp_path):
    machine = FakeMachine(demo=[(0, "no metrics here"), (0, "still none")], accuracy=[])
    hardware = TTHardware("m", device("N300"), tmp_path, root=tmp_path, execute=machine)
    with pytest.raises(
        HardwareRunFailed, match=r"^demo run failed twice \(device reset between\): no '@ X"
    ) as exc:
        hardware.evaluate(model_preset("accuracy", "Llama-3.2-1B", 16))
    assert "\n" not in str(exc.value) and str(tmp_path / "logs") in str(exc.value)


def test_hardware_source_scores_accuracy_and_speed_from_one_run(tmp_path):
    from tunelab.evaluator import Evaluator, HardwareSource

    machine = FakeMachine(demo=[(0, DEMO_LOG)], accuracy=[(0, ACCURACY_LOG)])
    hardware = TTHardware(
        "meta-llama/Llama-3.1-8B-Instruct", device("N150"), tmp_path, root=tmp_path, execute=machine
    )
    source = HardwareSource(hardware)
    metrics = Evaluator(source, source).score(model_preset("performance", "Llama-3.1-8B-Instruct", 32))
    assert metrics.kind == "measured+measured" and metrics.feasible
    assert (metrics.top1, metrics.top5, metrics.tok_s_u, metrics.ttft_ms) == (0.90, 0.97, 28.3, 104.23)
    runs = [call for call in machine.calls if call[0] != "tt-smi"]
    assert len(runs) == 2  # the demo and the accuracy test, once: speed and accuracy share one run
