"""Hostile input to `tunelab perf predict|measure|calibrate` and `tunelab run`, and Ctrl-C anywhere: one `error:`
(or `interrupted:`) line, a non-zero exit, no traceback, and stored files byte-identical."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_lm
import typer
from cli_entry import assert_one_line_error, run_main, snapshot
from test_tt_hardware import ACCURACY_LOG, DEMO_LOG

import tunelab.cli.perf as perf_cli
from tunelab.backends import tt_hardware
from tunelab.perf.throughput import PARAMS_FILE

PACKAGE_DATA = Path(tt_hardware.__file__).parent.parent / "perf" / "data"
PREDICT = ("perf", "predict", "--model", "Llama-3.2-1B", "--mesh-device", "N150", "--preset", "performance")
PARAMS = json.loads(PARAMS_FILE.read_text())
HEADER = "model,device,mode,top1,top5,tok_s_u,ttft_ms"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_lm.save(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def with_params(**changes) -> str:
    return json.dumps({**PARAMS, "params": {**PARAMS["params"], **changes}})


# 1. calibrate never writes into the package; every write is atomic


def test_calibrate_writes_into_the_current_directory_not_the_package(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    before = snapshot(PACKAGE_DATA)
    code, out, err = run_main(monkeypatch, capsys, "perf", "calibrate")
    assert code in (0, None) and "fit tok_s_u: median" in out
    assert err == (
        "wrote perf_params.json (in the current directory; the packaged fit is unchanged); "
        "use it with `tunelab perf predict --params perf_params.json`\n"
    )
    assert snapshot(PACKAGE_DATA) == before
    written = json.loads((tmp_path / "perf_params.json").read_text())
    assert written["params"] == pytest.approx(PARAMS["params"], rel=1e-3)


def test_calibrate_refuses_an_unwritable_output_before_fitting(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(perf_cli, "fit", lambda rows: pytest.fail("fitted before checking -o"))
    code, out, err = run_main(monkeypatch, capsys, "perf", "calibrate", "-o", tmp_path / "no" / "p.json")
    assert_one_line_error(code, out, err, "p.json", "does not exist")
    code, out, err = run_main(monkeypatch, capsys, "perf", "calibrate", "-o", tmp_path)
    assert_one_line_error(code, out, err, str(tmp_path), "is a directory")


def test_a_failed_calibrate_write_leaves_the_old_params_byte_identical(monkeypatch, capsys, tmp_path):
    import errno
    import os

    target = tmp_path / "params.json"
    target.write_text('{"old": true}\n')
    before = snapshot(tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code, out, err = run_main(monkeypatch, capsys, "perf", "calibrate", "-o", target)
    assert_one_line_error(code, out, err, "params.json", "No space left on device")
    assert snapshot(tmp_path) == before


def test_hardware_logs_are_written_atomically_and_a_failed_start_is_one_line(tmp_path, monkeypatch):
    from tunelab.model_presets import model_preset
    from tunelab.perf.devices import device

    writes = []
    monkeypatch.setattr(tt_hardware, "atomic_write", lambda path, data: writes.append(path))

    def execute(argv, **kwargs):
        log = DEMO_LOG if "simple_text_demo" in " ".join(argv) else ACCURACY_LOG
        return subprocess.CompletedProcess(argv, 0, log, "")

    hardware = TTHardware("m", device("N150"), tmp_path, root=tmp_path, execute=execute)
    hardware.evaluate(model_preset("performance", "Llama-3.2-1B", 16))
    assert [p.name for p in writes] == ["0001-N150-demo.log", "0002-N150-accuracy.log"]

    def missing(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    broken = TTHardware("m", device("N150"), tmp_path, root=tmp_path, execute=missing)
    with pytest.raises(tt_hardware.HardwareRunFailed, match=r"^demo run could not start: No such file"):
        broken.evaluate(model_preset("performance", "Llama-3.2-1B", 16))


# 2. bad --params and calibration files: one short line naming the file and the problem

BAD_PARAMS = {
    "garbage.json": (bytes(range(256)) * 40, "not UTF-8 text"),
    "latin1.json": ('{"params": "caf\xe9"}'.encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 15)"),
    "text.json": (b"dram_efficiency = 0.9\n" * 200, "is not JSON (Expecting value at line 1 column 1)"),
    "empty.json": (b"", "is empty"),
    "list.json": (b"[1, 2, 3]", 'expected a JSON object with a "params" object, found a list'),
    "no-params.json": (b'{"fit_error": {}}', 'has no "params" object (the format `tunelab perf calibrate`'),
    "params-list.json": (
        b'{"params": [0.9]}',
        '"params" must be an object of fitted parameters, found a list',
    ),
    "missing.json": (
        json.dumps({"params": {k: v for k, v in PARAMS["params"].items() if k != "op_us"}}).encode(),
        "params lacks op_us",
    ),
    "string.json": (
        with_params(dram_efficiency="fast").encode(),
        "params.dram_efficiency must be a positive",
    ),
    "bool.json": (with_params(host_ms=True).encode(), "params.host_ms must be a number >= 0, found true"),
    "nan.json": (
        with_params(host_ms=float("nan")).encode(),
        "params.host_ms must be a number >= 0, found nan",
    ),
    "negative.json": (with_params(op_us=-3).encode(), "params.op_us must be a number >= 0, found -3"),
    "zero.json": (with_params(eth_efficiency=0).encode(), "params.eth_efficiency must be a positive number"),
    "unknown.json": (with_params(**{"x" * 5000: 1}).encode(), "params has an unknown key 'xxxx"),
    "deep.json": (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
}


@pytest.mark.parametrize("name", BAD_PARAMS)
def test_bad_params_files_are_one_short_line(monkeypatch, capsys, tmp_path, name):
    content, problem = BAD_PARAMS[name]
    path = tmp_path / name
    path.write_bytes(content)
    code, out, err = run_main(monkeypatch, capsys, *PREDICT, "--params", path)
    assert_one_line_error(code, out, err, str(path), problem)


def test_a_missing_params_file_says_how_to_make_one(monkeypatch, capsys, tmp_path):
    code, out, err = run_main(monkeypatch, capsys, *PREDICT, "--params", tmp_path / "nope.json")
    assert_one_line_error(code, out, err, "nope.json", "tunelab perf calibrate -o")
    code, out, err = run_main(monkeypatch, capsys, *PREDICT, "--params", tmp_path)
    assert_one_line_error(code, out, err, str(tmp_path), "is a directory")


ROW = "Llama-3.2-1B,N150,performance,79,97,87.8,26"
BAD_CSV = {
    "garbage.csv": (bytes(range(256)) * 40, "not UTF-8 text"),
    "empty.csv": (b"# only a comment\n", "no calibration rows"),
    "header-only.csv": (f"{HEADER}\n".encode(), "no calibration rows after the header"),
    "header.csv": (b"a,b\n1,2\n", "the header lacks model, device, mode"),
    "short.csv": (f"{HEADER}\nLlama-3.2-1B,N150\n".encode(), "line 2: 2 fields, expected 7"),
    "text.csv": (f"{HEADER}\n{ROW.replace('87.8', 'fast')}\n".encode(), "line 2: tok_s_u must be a positive"),
    "nan.csv": (f"{HEADER}\n{ROW.replace('87.8', 'nan')}\n".encode(), "tok_s_u must be a positive number"),
    "negative.csv": (f"{HEADER}\n{ROW}\n{ROW.replace(',26', ',-26')}\n".encode(), "line 3: ttft_ms must be"),
    "zero.csv": (f"{HEADER}\n{ROW.replace('87.8', '0')}\n".encode(), "found '0'"),
    "no-model.csv": (f"{HEADER}\n{ROW.replace('Llama-3.2-1B', '')}\n".encode(), "line 2: model is empty"),
    "model.csv": (f"{HEADER}\n{ROW.replace('Llama-3.2-1B', 'x' * 3000)}\n".encode(), "unknown model 'xxx"),
    "device.csv": (f"{HEADER}\n{ROW.replace('N150', 'N999')}\n".encode(), "line 2: unknown device 'N999'"),
    "unsupported.csv": (
        f"{HEADER}\n{ROW.replace('Llama-3.2-1B', 'Llama-3.1-70B')}\n".encode(),
        "line 2: tt-transformers does not run Llama-3.1-70B on N150",
    ),
    "mode.csv": (f"{HEADER}\n{ROW.replace('performance', 'fastest')}\n".encode(), "unknown preset 'fastest'"),
}


@pytest.mark.parametrize("name", BAD_CSV)
def test_bad_calibration_files_are_one_short_line_and_write_nothing(monkeypatch, capsys, tmp_path, name):
    content, problem = BAD_CSV[name]
    (tmp_path / name).write_bytes(content)
    target = tmp_path / "params.json"
    target.write_text("{}\n")
    before = snapshot(tmp_path)
    code, out, err = run_main(
        monkeypatch, capsys, "perf", "calibrate", "--data", tmp_path / name, "-o", target
    )
    assert_one_line_error(code, out, err, name, problem)
    assert snapshot(tmp_path) == before


# 3. tunelab run: --prefill, --layers and the text's length are checked


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (("--prefill", "0"), ("--prefill must be at least 1, got 0",)),
        (("--prefill", "-4"), ("--prefill must be at least 1, got -4",)),
        (("--layers", "0"), ("--layers must be at least 1, got 0",)),
        (("--prefill", "1000"), ("--prefill 1000 must be less than the text's", "tokens")),
        (("--layers", "7"), ("n_layers=7", "has 2 layers")),
        (("--text", ""), ("--text is 0 tokens; it needs at least 2",)),
        (("--text", "a"), ("--text is 1 token; it needs at least 2",)),
        (
            ("--text", "word " * 3000),
            ("tokens, more than tiny-llama's context of 512 (max_position_embeddings)",),
        ),
        (("--device", "cuda:x"), ("unknown --device 'cuda:x' (expected cpu, cuda or cuda:N)",)),
    ],
)
def test_run_refuses_bad_numbers_in_one_line(monkeypatch, capsys, tiny_dir, args, mentions):
    code, out, err = run_main(monkeypatch, capsys, "run", "--model", tiny_dir, *args)
    assert_one_line_error(code, out, err, *mentions)


def test_run_uses_the_prefill_it_is_given(monkeypatch, capsys, tiny_dir):
    code, out, _ = run_main(
        monkeypatch, capsys, "run", "--model", tiny_dir, "--prefill", "3", "--layers", "1"
    )
    assert code in (0, None) and "(3 prefill tokens)" in out


def test_cuda_without_a_gpu_is_one_line(monkeypatch, capsys, tiny_dir):
    import torch

    if torch.cuda.is_available():
        code, out, err = run_main(monkeypatch, capsys, "run", "--model", tiny_dir, "--device", "cuda:999")
        assert_one_line_error(code, out, err, "--device cuda:999: there is no GPU 999")
    else:
        code, out, err = run_main(monkeypatch, capsys, "run", "--model", tiny_dir, "--device", "cuda")
        assert_one_line_error(code, out, err, "--device cuda", "sees no CUDA GPU")


# 4. perf predict: lengths within the model's context, batch >= 1, known devices and models


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (
            ("--seq-len", "131073"),
            ("sequence length 131073", "context of 131072 tokens", "max_position_embeddings"),
        ),
        (("--seq-len", "0"), ("sequence length must be at least 1, got 0",)),
        (("--seq-len", "-7"), ("sequence length must be at least 1, got -7",)),
        (("--batch", "0"), ("batch must be at least 1, got 0",)),
        (("--batch", "-2"), ("batch must be at least 1, got -2",)),
        (("--batch", "1000000000"), ("does not fit on N150",)),
        (("--mesh-device", "N999"), ("unknown device 'N999'", "N150")),
        (("--mesh-device", "N1\x1b[2J" + "5" * 500), ("unknown device 'N1?[2J55",)),
    ],
)
def test_predict_refuses_bad_sizes_and_names(monkeypatch, capsys, args, mentions):
    code, out, err = run_main(monkeypatch, capsys, *PREDICT, *args)
    assert_one_line_error(code, out, err, *mentions)


def test_predict_accepts_the_full_context_and_refuses_unknown_models(monkeypatch, capsys, tmp_path):
    code, out, _ = run_main(monkeypatch, capsys, *PREDICT, "--seq-len", "131072", "--json")
    assert code in (0, None) and json.loads(out)["seq_len"] == 131072
    rest = PREDICT[4:]
    code, out, err = run_main(monkeypatch, capsys, "perf", "predict", "--model", "x" * 5000, *rest)
    assert_one_line_error(code, out, err, "unknown model 'xxx")
    code, out, err = run_main(monkeypatch, capsys, "perf", "predict", "--model", tmp_path, *rest)
    assert_one_line_error(code, out, err, str(tmp_path), "a directory without a config.json")


BAD_CONFIGS = {
    "garbage": (bytes(range(256)) * 10, "not UTF-8 text"),
    "array": (b"[]", "a config.json must hold a JSON object, found a list"),
    "huge-dim": (
        {"hidden_size": 10**30, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 8},
        "hidden_size must be an integer in 1..67108864, found a very large integer",
    ),
    "float-vocab": ({"vocab_size": 320.5}, "vocab_size must be an integer in 1..67108864, found 320.5"),
    "no-heads": ({"num_attention_heads": 0}, "missing or malformed shape fields"),
    "context": ({"max_position_embeddings": -1}, "max_position_embeddings must be an integer in 1..67108864"),
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_predict_refuses_malformed_config_json(monkeypatch, capsys, tmp_path, name):
    content, problem = BAD_CONFIGS[name]
    if isinstance(content, dict):
        base = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2}
        base |= {"num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 320}
        content = json.dumps(base | content).encode()
    path = tmp_path / name / "config.json"
    path.parent.mkdir()
    path.write_bytes(content)
    code, out, err = run_main(monkeypatch, capsys, "perf", "predict", "--model", path.parent, *PREDICT[4:])
    assert_one_line_error(code, out, err, problem)


# perf measure: inputs are checked before the hardware; a workdir that cannot be made is one line


class FakeHardware(tt_hardware.TTHardware):
    """TTHardware with a fake machine: the demo prints DEMO_LOG; the accuracy test runs `accuracy`."""

    accuracy = staticmethod(lambda: ACCURACY_LOG)

    def __init__(self, hf_model, device, workdir):
        super().__init__(hf_model, device, workdir, root=Path(workdir), execute=self.machine)

    def machine(self, argv, **kwargs):
        log = DEMO_LOG if "simple_text_demo" in " ".join(argv) else self.accuracy()
        return subprocess.CompletedProcess(argv, 0, log, "")


TTHardware = tt_hardware.TTHardware
MEASURE = ("perf", "measure", "--model", "Llama-3.2-1B", "--mesh-device", "N150", "--preset", "performance")


def test_measure_checks_its_inputs_and_workdir_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(tt_hardware, "TTHardware", FakeHardware)
    code, out, err = run_main(monkeypatch, capsys, *MEASURE, "--batch", "0")
    assert_one_line_error(code, out, err, "--batch must be at least 1, got 0")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, out, err = run_main(monkeypatch, capsys, *MEASURE, "--workdir", blocker)
    assert_one_line_error(code, out, err, str(blocker), "cannot create the directory")
    code, out, _ = run_main(monkeypatch, capsys, *MEASURE, "--workdir", tmp_path / "runs", "--json")
    assert code in (0, None) and json.loads(out)["top1"] == 90


# 5. Ctrl-C: exit 130 and one line saying what was kept


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_in_predict_says_nothing_was_written(monkeypatch, capsys):
    monkeypatch.setattr(perf_cli, "predict", interrupt)
    assert run_main(monkeypatch, capsys, *PREDICT) == (130, "", "interrupted: nothing was written\n")


def test_ctrl_c_in_run_says_nothing_was_written(monkeypatch, capsys, tiny_dir):
    import tunelab.models

    monkeypatch.setattr(tunelab.models, "load_model", interrupt)
    code, out, err = run_main(monkeypatch, capsys, "run", "--model", tiny_dir)
    assert (code, out, err) == (130, "", "interrupted: nothing was written\n")


def test_ctrl_c_after_calibrate_wrote_names_the_complete_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(perf_cli, "cross_validate", interrupt)
    target = tmp_path / "params.json"
    code, _, err = run_main(monkeypatch, capsys, "perf", "calibrate", "-o", target, "--cv")
    assert code == 130
    assert err.splitlines()[-1] == f"interrupted: these files were written completely: {target}"
    assert set(json.loads(target.read_text())) == {"params", "fit_error", "calibration"}


def test_ctrl_c_in_measure_names_the_config_and_logs_it_completed(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(FakeHardware, "accuracy", staticmethod(interrupt))
    monkeypatch.setattr(tt_hardware, "TTHardware", FakeHardware)
    code, out, err = run_main(monkeypatch, capsys, *MEASURE, "--workdir", tmp_path)
    assert (code, out) == (130, "")
    assert err == (
        f"interrupted: these files were written completely: {tmp_path / 'config-0000.json'}, "
        f"{tmp_path / 'logs' / '0001-N150-demo.log'}\n"
    )


@pytest.mark.parametrize("how", ["sys.exit", "typer.Exit"])
def test_a_command_that_reports_its_own_interrupt_is_not_reported_twice(monkeypatch, capsys, how):
    """`study run` and `sensitivity` catch Ctrl-C, say what they kept and exit 130 themselves."""

    def own(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            print("interrupted: 3 complete trials are kept", file=sys.stderr)
            if how == "sys.exit":
                sys.exit(130)
            raise typer.Exit(130) from None

    monkeypatch.setattr(perf_cli, "predict", own)
    assert run_main(monkeypatch, capsys, *PREDICT) == (130, "", "interrupted: 3 complete trials are kept\n")
