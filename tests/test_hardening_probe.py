"""Regressions from a hostile-user probe of the whole CLI (every command, subprocess per case): each bad input is
one `error:` line, a non-zero exit, and stored data (files, study databases by content) left as it was."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import tiny_lm
import tiny_search
from cli_entry import assert_one_line_error, database_dump, run_main, snapshot

LONG = "a" * 5000
ESCAPE = "\x1b[31mred\x1b[0m"
GARBAGE = b"\x89PNG\r\n\x1a\n\x00garbage\xff\xfe"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny model, its reference and a study `s` with 4 trials, a verification and a sensitivity profile."""
    root = tmp_path_factory.mktemp("hardening-probe")
    model_dir, _, _, refs = tiny_search.setup(root)
    db = root / "s.db"
    url = f"sqlite:///{db}"
    shape = ["--window-len", "64", "--prefill", "32", "--windows", "2", "--space", "per-decoder"]
    capture = SimpleNamespace(readouterr=lambda: ("", ""))  # run_main only needs readouterr()
    with pytest.MonkeyPatch.context() as m:
        create = [
            "study",
            "create",
            "s",
            "--model",
            model_dir,
            "--mesh-device",
            "N150",
            *shape,
            "--storage",
            url,
        ]
        for args in (
            create,
            ["study", "run", "s", "--trials", 4, "--storage", url, "--reference-dir", refs],
            [
                "study",
                "verify",
                "s",
                "--windows",
                2,
                "--accumulation",
                "fast",
                "--storage",
                url,
                "--reference-dir",
                refs,
            ],
            ["sensitivity", "--study", "s", "--storage", url, "--reference-dir", refs],
        ):
            assert run_main(m, capture, *args)[0] in (0, None), args
    fifo = root / "fifo"
    os.mkfifo(fifo)
    (root / "loop").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop")
    return root, model_dir, refs, db


def cli(monkeypatch, capsys, *args):
    return run_main(monkeypatch, capsys, *map(str, args))


def copy_db(db: Path, target: Path, *statements: str) -> Path:
    """A copy of the study database with `statements` applied (a consistent copy of a WAL database)."""
    source, dest = sqlite3.connect(f"file:{db}?mode=ro", uri=True), sqlite3.connect(target)
    source.backup(dest)
    source.close()
    for statement in statements:
        dest.execute(statement)
    dest.commit()
    dest.close()
    return target


def spec_db(db: Path, target: Path, change) -> Path:
    """A copy whose stored study settings are `change(settings)` (a JSON value, or raw text when a str)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    (value,) = con.execute("SELECT value_json FROM study_user_attributes WHERE key='tunelab'").fetchone()
    con.close()
    new = change(json.loads(value))
    text = (new if isinstance(new, str) else json.dumps(new)).replace("'", "''")
    return copy_db(db, target, f"UPDATE study_user_attributes SET value_json='{text}' WHERE key='tunelab'")


def model_variant(model_dir: Path, target: Path, **config) -> Path:
    shutil.copytree(model_dir, target)
    data = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**data, **config}))
    return target


# -- the error line itself: printable, one line, short, whatever the input


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        ([ESCAPE], "no such command"),
        (["config", "convert", "--config", "/tmp/" + LONG, "--layers", 2], "..."),
        (["study", "create", ESCAPE, "--mesh-device", "N150"], "not usable"),
        (["reference", "show", LONG, "--dir", "."], "no reference"),
    ],
)
def test_escape_sequences_and_long_values_stay_one_short_printable_line(
    monkeypatch, capsys, tmp_path, args, mention
):
    monkeypatch.chdir(tmp_path)
    line = assert_one_line_error(*cli(monkeypatch, capsys, *args), mention)
    assert "\x1b" not in line and "\\x1b" not in line


def test_a_non_utf8_file_name_is_shown_without_raw_bytes(monkeypatch, capsys, tmp_path):
    path = tmp_path / (os.fsdecode(b"\xff\xfe") + ".json")
    path.write_bytes(GARBAGE)
    line = assert_one_line_error(
        *cli(monkeypatch, capsys, "config", "validate", path, "--layers", 2), "not UTF-8"
    )
    assert "??.json" in line


# -- outputs that cannot be replaced, names the file system cannot hold


def test_outputs_that_are_fifos_or_loops_are_refused_and_left_alone(env, monkeypatch, capsys, tmp_path):
    root, _, refs, db = env
    url = f"sqlite:///{db}"
    before = snapshot(refs), database_dump(db)
    for output in (root / "fifo", root / "loop"):
        cases = [
            ["study", "export", "s", "--storage", url, "--fastest", "-o", output],
            [
                "reference",
                "export",
                "--key",
                next(refs.glob("*.safetensors")).stem,
                "--dir",
                refs,
                "-o",
                output,
            ],
            ["perf", "calibrate", "-o", output],
        ]
        for args in cases:
            assert_one_line_error(*cli(monkeypatch, capsys, *args), str(output.name))
    assert (root / "fifo").is_fifo() and (root / "loop").is_symlink()
    assert (snapshot(refs), database_dump(db)) == before


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (["run", "--model", LONG], "not a local path"),
        (["reference", "build", "--corpus", LONG], "unknown corpus"),
        (["eval", "--reference", LONG, "--preset", "performance"], "no reference"),
        (["study", "list", "--storage", f"sqlite:///{LONG}.db"], "File name too long"),
        (["study", "export", "s", "--fastest", "-o", LONG], "File name too long"),
        (["reference", "import", LONG], "File name too long"),
    ],
)
def test_names_too_long_for_the_file_system(env, monkeypatch, capsys, tmp_path, args, mention):
    _, model_dir, refs, db = env
    monkeypatch.chdir(tmp_path)
    if args[0] in ("eval", "reference") and args[1] != "import":
        args = [*args, "--dir", refs, "--model", model_dir]
    if args[:2] == ["study", "export"]:
        args = [*args, "--storage", f"sqlite:///{db}"]
    assert_one_line_error(*cli(monkeypatch, capsys, *args), mention)
    assert not any(tmp_path.iterdir())


def test_a_fifo_refpt_is_refused_instead_of_blocking(env, monkeypatch, capsys):
    root, model_dir, refs, _ = env
    args = ["reference", "import", root / "fifo", "--model", model_dir, "--dir", refs]
    assert_one_line_error(*cli(monkeypatch, capsys, *args), "not a regular file")


def test_text_that_is_not_utf8(env, monkeypatch, capsys):
    _, model_dir, _, _ = env
    text = "abc " + os.fsdecode(b"\xff\xfe") + " def ghi"
    assert_one_line_error(*cli(monkeypatch, capsys, "run", "--model", model_dir, "--text", text), "not UTF-8")


# -- checkpoints whose config and weights cannot be the model they claim


@pytest.mark.parametrize(
    ("config", "mention"),
    [
        ({"num_hidden_layers": 3}, "lacks"),  # transformers would initialise decoder 2 at random
        ({"rope_parameters": {"rope_theta": -1.0, "rope_type": "default"}}, "rope_theta"),
        ({"max_position_embeddings": 0}, "max_position_embeddings"),
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, "not a multiple"),
    ],
)
def test_checkpoints_that_do_not_match_their_config(env, monkeypatch, capsys, tmp_path, config, mention):
    _, model_dir, _, _ = env
    variant = model_variant(model_dir, tmp_path / "variant", **config)
    assert_one_line_error(*cli(monkeypatch, capsys, "run", "--model", variant), mention)


def test_nan_weights_are_refused(env, monkeypatch, capsys, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    _, model_dir, _, _ = env
    variant = model_variant(model_dir, tmp_path / "nan")
    tensors = load_file(str(variant / "model.safetensors"))
    tensors = {k: torch.full_like(v, float("nan")) if v.dim() == 2 else v for k, v in tensors.items()}
    save_file(tensors, str(variant / "model.safetensors"), metadata={"format": "pt"})
    refs = tmp_path / "refs"
    args = ["reference", "build", "--model", variant, "--window-len", 64, "--prefill", 32, "--dir", refs]
    assert_one_line_error(*cli(monkeypatch, capsys, *args), "NaN or infinite")
    assert not refs.exists() or not any(refs.iterdir())


def test_a_failed_conversion_leaves_the_model_cache_as_it_was(monkeypatch, capsys, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("TUNELAB_CACHE_DIR", str(cache))
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + GARBAGE)
    assert_one_line_error(*cli(monkeypatch, capsys, "run", "--model", tmp_path / "bad.gguf"), "GGUF")
    assert not any(cache.iterdir())


@pytest.mark.parametrize(
    ("config", "mention"),
    [({"num_attention_heads": 3}, "not a multiple"), ({"num_key_value_heads": 0}, "num_key_value_heads")],
)
def test_predict_refuses_inconsistent_head_counts(env, monkeypatch, capsys, tmp_path, config, mention):
    _, model_dir, _, _ = env
    variant = model_variant(model_dir, tmp_path / "variant", **config)
    args = ["perf", "predict", "--model", variant, "--mesh-device", "N150", "--preset", "performance"]
    assert_one_line_error(*cli(monkeypatch, capsys, *args), mention)


def test_params_too_large_to_compute_with(monkeypatch, capsys, tmp_path):
    from tunelab.perf.throughput import PARAMS_FILE

    data = json.loads(PARAMS_FILE.read_text())
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({**data, "params": {k: 1e308 for k in data["params"]}}))
    args = ["perf", "predict", "--model", "Llama-3.1-8B", "--mesh-device", "N150", "--preset", "performance"]
    assert_one_line_error(*cli(monkeypatch, capsys, *args, "--params", path), "dram_efficiency", "1e+06")


def test_calibrate_does_not_write_parameters_its_own_predict_refuses(monkeypatch, capsys, tmp_path):
    from tunelab.perf.calibration import DATA_FILE

    lines = DATA_FILE.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    rows = [
        ",".join(f if i < 3 else "1e308" for i, f in enumerate(r.split(","))) for r in lines[header + 1 :]
    ]
    (tmp_path / "huge.csv").write_text("\n".join([lines[header], *rows]) + "\n")
    args = ["perf", "calibrate", "--data", tmp_path / "huge.csv", "-o", tmp_path / "p.json"]
    assert_one_line_error(*cli(monkeypatch, capsys, *args), "did not converge", "out of range")
    assert not (tmp_path / "p.json").exists()


# -- study create: checked before anything is stored


@pytest.mark.parametrize(
    ("extra", "mention"),
    [
        (["--seed", "-1"], "--seed"),
        (["--seed", "9" * 25], "--seed"),
        (["--corpus", "nosuch.txt"], "unknown corpus"),
        (["--corpus", "garbage.txt"], "UTF-8"),
        (["--fidelities", "HIFI5"], "unknown fidelity 'HIFI5'"),
    ],
)
def test_create_refuses_before_making_a_database(env, monkeypatch, capsys, tmp_path, extra, mention):
    _, model_dir, _, _ = env
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.txt").write_bytes(GARBAGE)
    args = ["study", "create", "n", "--model", model_dir, "--mesh-device", "N150", "--window-len", 64]
    args += [
        "--prefill",
        32,
        "--space",
        "per-decoder",
        "--storage",
        f"sqlite:///{tmp_path / 'new.db'}",
        *extra,
    ]
    assert_one_line_error(*cli(monkeypatch, capsys, *args), mention)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.txt"]


# -- stored study data that is corrupt or stale


SPEC_CHANGES = [
    ("string", lambda s: '"garbage"', "expected a JSON object"),
    ("not-json", lambda s: "not json {", "not JSON"),
    ("unknown-key", lambda s: {**s, "bogus": 1}, "unknown key 'bogus'"),
    ("model-int", lambda s: {**s, "evaluation": {**s["evaluation"], "model": 5}}, "model must be a string"),
    ("no-evaluation", lambda s: {k: v for k, v in s.items() if k != "evaluation"}, "evaluation is missing"),
    ("evaluation-list", lambda s: {**s, "evaluation": [1, 2]}, "evaluation must be an object"),
    ("windows-text", lambda s: {**s, "evaluation": {**s["evaluation"], "windows": "two"}}, "--windows"),
    ("seed", lambda s: {**s, "seed": -1}, "--seed"),
    ("other-name", lambda s: {**s, "name": "other"}, "study 'other'"),
]


@pytest.mark.parametrize(
    ("change", "mention"), [c[1:] for c in SPEC_CHANGES], ids=[c[0] for c in SPEC_CHANGES]
)
def test_corrupt_stored_settings_are_one_line_and_change_nothing(
    env, monkeypatch, capsys, tmp_path, change, mention
):
    _, _, refs, db = env
    corrupt = spec_db(db, tmp_path / "corrupt.db", change)
    url, before = f"sqlite:///{corrupt}", database_dump(corrupt)
    for command in ("front", "show", "run"):
        args = ["study", command, "s", "--storage", url] + (
            ["--trials", 5, "--reference-dir", refs] if command == "run" else []
        )
        assert_one_line_error(*cli(monkeypatch, capsys, *args), mention)
    assert database_dump(corrupt) == before


def test_list_shows_a_study_with_corrupt_settings_and_delete_removes_it(env, monkeypatch, capsys, tmp_path):
    _, _, _, db = env
    url = f"sqlite:///{spec_db(db, tmp_path / 'corrupt.db', lambda s: [1, 2])}"
    code, out, _ = cli(monkeypatch, capsys, "study", "list", "--storage", url, "--json")
    assert code in (0, None) and json.loads(out)[0]["name"] == "s"
    assert cli(monkeypatch, capsys, "study", "delete", "s", "--storage", url, "--yes")[0] in (0, None)
    assert json.loads(cli(monkeypatch, capsys, "study", "list", "--storage", url, "--json")[1]) == []


TRIAL_CORRUPTIONS = [
    ("metrics-string", "UPDATE trial_user_attributes SET value_json='\"x\"' WHERE key='metrics'", "metrics"),
    (
        "metrics-field",
        "UPDATE trial_user_attributes SET value_json='{\"top1\": 1}' WHERE key='metrics'",
        "config_key",
    ),
    (
        "config",
        "UPDATE trial_user_attributes SET value_json='\"x\"' WHERE key='config'",
        "corrupt stored config",
    ),
    ("verification", "UPDATE tunelab_verifications SET metrics='garbage'", "tunelab_verifications"),
]


@pytest.mark.parametrize(
    ("sql", "mention"), [c[1:] for c in TRIAL_CORRUPTIONS], ids=[c[0] for c in TRIAL_CORRUPTIONS]
)
def test_corrupt_stored_trials_are_one_line_and_change_nothing(
    env, monkeypatch, capsys, tmp_path, sql, mention
):
    _, _, refs, db = env
    corrupt = copy_db(db, tmp_path / "corrupt.db", sql)
    url, before = f"sqlite:///{corrupt}", database_dump(corrupt)
    cases = [
        ["study", "front", "s"],
        ["study", "export", "s", "--trial", 0, "-o", tmp_path / "out.json"],
        ["study", "plot", "s", "-o", tmp_path / "plots"],
        ["study", "run", "s", "--trials", 5, "--reference-dir", refs],
        ["sensitivity", "--study", "s", "--reference-dir", refs, "--ladder", 2],
    ]
    for args in cases:
        assert_one_line_error(*cli(monkeypatch, capsys, *args, "--storage", url), mention)
    assert database_dump(corrupt) == before
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm", ".lock"))] == [
        "corrupt.db"
    ]


def test_a_corrupt_cached_score_fails_before_a_trial_is_stored(env, monkeypatch, capsys, tmp_path):
    _, _, refs, db = env
    corrupt = copy_db(db, tmp_path / "corrupt.db", "UPDATE tunelab_evaluations SET metrics='garbage'")
    before = database_dump(corrupt)
    args = ["study", "run", "s", "--trials", 5, "--storage", f"sqlite:///{corrupt}", "--reference-dir", refs]
    assert_one_line_error(*cli(monkeypatch, capsys, *args), "tunelab_evaluations")
    assert database_dump(corrupt) == before


def test_corrupt_sensitivity_rows_are_one_line(env, monkeypatch, capsys, tmp_path):
    _, _, refs, db = env
    corrupt = copy_db(db, tmp_path / "corrupt.db", "UPDATE tunelab_sensitivity SET metrics='garbage'")
    url = f"sqlite:///{corrupt}"
    for args in (
        ["study", "plot", "s", "-o", tmp_path / "plots"],
        ["sensitivity", "--study", "s", "--reference-dir", refs],
    ):
        assert_one_line_error(*cli(monkeypatch, capsys, *args, "--storage", url), "tunelab_sensitivity")
    assert not (tmp_path / "plots").exists()


def test_a_corrupt_hypervolume_reference_point_is_computed_again(env, monkeypatch, capsys, tmp_path):
    _, _, refs, db = env
    sql = "UPDATE study_user_attributes SET value_json='\"x\"' WHERE key='tunelab_hv_reference'"
    url = f"sqlite:///{copy_db(db, tmp_path / 'corrupt.db', sql)}"
    code, _, err = cli(
        monkeypatch, capsys, "study", "run", "s", "--trials", 5, "--storage", url, "--reference-dir", refs
    )
    assert code in (0, None), err


def test_a_trial_that_fails_with_a_tunelab_error_is_one_line_without_optunas_traceback(
    env, monkeypatch, capfd, tmp_path
):
    from tunelab.errors import TunelabError
    from tunelab.search.study import StudyRunner

    _, _, refs, db = env
    url = f"sqlite:///{copy_db(db, tmp_path / 'copy.db')}"

    def fail(self, precision):
        raise TunelabError("the evaluator failed")

    monkeypatch.setattr(StudyRunner, "score", fail)
    args = ["study", "run", "s", "--trials", 5, "--storage", url, "--reference-dir", refs]
    assert_one_line_error(*cli(monkeypatch, capfd, *args), "the evaluator failed")


def test_a_model_changed_since_the_trials_is_refused_before_a_reference_is_built(
    env, monkeypatch, capsys, tmp_path
):
    _, _, refs, db = env
    other = tiny_lm.save(tmp_path / "other", seed=1)
    capsys.readouterr()  # the save's progress bar

    def changed(spec):
        return {**spec, "evaluation": {**spec["evaluation"], "model": str(other)}}

    corrupt = spec_db(db, tmp_path / "changed.db", changed)
    before = snapshot(refs), database_dump(corrupt)
    for args in (["study", "run", "s", "--trials", 5], ["study", "verify", "s", "--windows", 2]):
        url = f"sqlite:///{corrupt}"
        assert_one_line_error(
            *cli(monkeypatch, capsys, *args, "--storage", url, "--reference-dir", refs), "fingerprint"
        )
    assert (snapshot(refs), database_dump(corrupt)) == before


@pytest.mark.parametrize("content", [b"", "plain"], ids=["empty-file", "another-database"])
def test_sqlite_files_that_are_not_study_databases_are_left_alone(
    env, monkeypatch, capsys, tmp_path, content
):
    _, _, refs, _ = env
    path = tmp_path / "other.db"
    if content == "plain":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE notes (x TEXT)")
        con.commit()
        con.close()
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    url = f"sqlite:///{path}"
    for args in (
        ["study", "list"],
        ["study", "show", "s"],
        ["study", "run", "s", "--reference-dir", refs],
        ["study", "delete", "s", "--yes"],
    ):
        assert_one_line_error(*cli(monkeypatch, capsys, *args, "--storage", url), "not a study database")
    assert path.read_bytes() == before


def test_a_lock_file_that_is_a_directory(env, monkeypatch, capsys, tmp_path):
    _, _, refs, db = env
    copy = copy_db(db, tmp_path / "s.db")
    Path(f"{copy}.lock").mkdir()
    args = ["study", "run", "s", "--trials", 5, "--storage", f"sqlite:///{copy}", "--reference-dir", refs]
    assert_one_line_error(*cli(monkeypatch, capsys, *args), "lock file")


def test_copying_a_missing_study_creates_no_database(env, monkeypatch, capsys, tmp_path):
    _, _, _, db = env
    args = [
        "study",
        "copy",
        "nosuch",
        "--storage",
        f"sqlite:///{db}",
        "--to",
        f"sqlite:///{tmp_path / 'new.db'}",
    ]
    assert_one_line_error(*cli(monkeypatch, capsys, *args), "no study 'nosuch'")
    assert not (tmp_path / "new.db").exists()


# -- option combinations and ranges


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (["study", "front", "s", "--json", "--csv"], "not both"),
        (["study", "export", "s", "--min-top1", "-1", "-o", "out.json"], "--min-top1"),
        (["study", "export", "s", "--fastest", "--tolerance", "0.5", "-o", "out.json"], "--as-fast-as"),
        (["study", "run", "s", "--workers", 100000], "--workers"),
        (["sensitivity", "--study", "s", "--top", "-1"], "--top"),
        (["sensitivity", "--study", "s", "--ladder", "9" * 25], "--ladder"),
    ],
)
def test_option_values_that_cannot_mean_anything(env, monkeypatch, capsys, tmp_path, args, mention):
    _, _, _, db = env
    monkeypatch.chdir(tmp_path)
    before = database_dump(db)
    assert_one_line_error(*cli(monkeypatch, capsys, *args, "--storage", f"sqlite:///{db}"), mention)
    assert database_dump(db) == before and not any(tmp_path.iterdir())


def test_sensitivity_for_a_model_it_cannot_profile_creates_no_study(env, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'sens.db'}"
    for args, mention in (
        (["--model", tmp_path / "nosuch", "--mesh-device", "N150", "--storage", storage], "no such file"),
        (["--model", tmp_path / "nosuch", "--mesh-device", "bogus"], "unknown device"),
    ):
        assert_one_line_error(*cli(monkeypatch, capsys, "sensitivity", *args), mention)
    assert not any(tmp_path.iterdir())
