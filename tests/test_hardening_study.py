"""Bad input to `tunelab study ...` and `tunelab worker`: one line naming the problem, a non-zero exit, and the
study database and files left byte-identical."""

from __future__ import annotations

import pytest
import tiny_search
from cli_entry import assert_one_line_error, database_dump, run_main, snapshot


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening-study")
    model_dir, _, _, refs = tiny_search.setup(root)
    (root / "garbage.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage\xff\xfe")
    (root / "a-directory").mkdir()
    return root, model_dir, refs


def cli(monkeypatch, capsys, *args):
    return run_main(monkeypatch, capsys, *map(str, args))


def create_args(model_dir, url, name="ok", *extra):
    where = ["--model", model_dir, "--storage", url, "--mesh-device", "N150"]
    shape = ["--window-len", "64", "--prefill", "32", "--windows", "2", "--space", "per-decoder"]
    return ["study", "create", name, *where, *shape, *extra]


CREATE_CASES = [
    (["--window-len", "100000"], "beyond"),
    (["--prefill", "0"], "--prefill"),
    (["--prefill", "64"], "--prefill"),
    (["--window-len", "-5"], "--window-len"),
    (["--windows", "100000000"], "--windows"),
    (["--layers", "1000000000"], "--layers"),
    (["--layers", "3"], "layers"),
    (["--space", "0-1000000000"], "decoder 1000000000"),
    (["--space", "blocks:0"], "granularity"),
    (["--space", "blocks:9"], "blocks:9"),
    (["--objectives", "top1,foo"], "foo"),
    (["--min-top1", "nan"], "--min-top1"),
    (["--max-dram", "-1"], "--max-dram"),
    (["--formats", "BFP3"], "BFP3"),
    (["--tensors", "FOO"], "FOO"),
    (["--sampler", "annealing"], "annealing"),
    (["--seeds", "fastest"], "fastest"),
]


@pytest.mark.parametrize(("extra", "mention"), CREATE_CASES, ids=[" ".join(c[0]) for c in CREATE_CASES])
def test_create_refuses_what_cannot_run_and_stores_nothing(
    env, tmp_path, monkeypatch, capsys, extra, mention
):
    _, model_dir, _ = env
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert cli(monkeypatch, capsys, *create_args(model_dir, url, "first"))[0] in (0, None)
    before = database_dump(tmp_path / "studies.db")
    assert_one_line_error(*cli(monkeypatch, capsys, *create_args(model_dir, url, "second", *extra)), mention)
    assert database_dump(tmp_path / "studies.db") == before
    _, out, _ = cli(monkeypatch, capsys, "study", "list", "--storage", url, "--json")
    assert '"second"' not in out


@pytest.mark.parametrize(
    ("name", "mention"), [("x" * 200, "not usable"), ("../escape", "not usable"), ("", "not usable")]
)
def test_study_names_that_would_escape_or_overflow_are_refused(
    env, tmp_path, monkeypatch, capsys, name, mention
):
    _, model_dir, _ = env
    monkeypatch.chdir(tmp_path)
    args = ["study", "create", name, "--model", model_dir, "--mesh-device", "N150", "--window-len", "64"]
    assert_one_line_error(*cli(monkeypatch, capsys, *args, "--prefill", "32"), mention)
    assert not (tmp_path / "escape.db").exists() and not any(tmp_path.rglob("*.db"))


def test_create_of_a_missing_model_is_one_line(env, tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    args = create_args(tmp_path / "no-such-model", url)
    assert_one_line_error(*cli(monkeypatch, capsys, *args), "no-such-model")


def test_run_export_plot_and_list_refuse_bad_input_and_change_nothing(env, tmp_path, monkeypatch, capsys):
    root, model_dir, refs = env
    db = tmp_path / "studies.db"
    url = f"sqlite:///{db}"
    assert cli(monkeypatch, capsys, *create_args(model_dir, url))[0] in (0, None)
    code, _, err = cli(
        monkeypatch, capsys, "study", "run", "ok", "--storage", url, "--trials", 4, "--reference-dir", refs
    )
    assert code in (0, None), err
    (tmp_path / "export.json").write_text('{"existing": true}\n')
    stored = snapshot(tmp_path / "export.json", root / "garbage.json", refs), database_dump(db)
    cases = [
        (["study", "run", "ok", "--trials", "0"], "--trials"),
        (["study", "run", "ok", "--workers", "0"], "--workers"),
        (["study", "run", "ok", "--timeout", "-1"], "--timeout"),
        (["study", "run", "ok", "--heartbeat", "0"], "--heartbeat"),
        (["worker", "ok", "--trials", "-3"], "--trials"),
        (["study", "run", "nosuch"], "no study 'nosuch'"),
        (["worker", "nosuch"], "no study 'nosuch'"),
        (["study", "export", "ok", "--fastest", "-o", tmp_path / "missing" / "x.json"], "does not exist"),
        (["study", "export", "ok", "--fastest", "-o", root / "a-directory"], "is a directory"),
        (["study", "export", "ok", "--trial", "99999", "-o", tmp_path / "export.json"], "99999"),
        (["study", "export", "ok", "-o", tmp_path / "export.json"], "exactly one of"),
        (["study", "export", "ok", "--as-fast-as", "fastest", "-o", tmp_path / "export.json"], "fastest"),
        (["study", "plot", "ok", "-o", root / "garbage.json"], "not a directory"),
        (["study", "show", "nosuch"], "nosuch"),
        (["study", "delete", "nosuch"], "nosuch"),
    ]
    for args, mention in cases:
        assert_one_line_error(*cli(monkeypatch, capsys, *args, "--storage", url), mention)
    assert_one_line_error(
        *cli(monkeypatch, capsys, "study", "list", "--storage", f"sqlite:///{root / 'garbage.json'}"),
        "not a database",
    )
    assert_one_line_error(
        *cli(monkeypatch, capsys, "study", "list", "--storage", f"sqlite:///{tmp_path}/missing/dir/s.db"),
        "no study database",
    )
    assert (snapshot(tmp_path / "export.json", root / "garbage.json", refs), database_dump(db)) == stored


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (["perf", "predict", "--seq-len", "1e3"], "--seq-len"),
        (["config", "show", "--layers", "abc"], "--layers"),
        (["study", "run"], "missing argument"),
        (["study", "frobnicate"], "no such command"),
        (["study", "run", "x", "--bogus"], "--bogus"),
        (["worker", "x", "--trials", "many"], "--trials"),
    ],
)
def test_option_parsing_errors_are_one_line(monkeypatch, capsys, args, mention):
    assert_one_line_error(*cli(monkeypatch, capsys, *args), mention, "--help")
