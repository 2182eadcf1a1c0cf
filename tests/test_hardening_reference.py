"""Bad input around references and evaluation: one `error:` line, a non-zero exit, stored files byte-identical.

The tiny random Llama is saved as a HF directory and run through the real loader and the CLI in-process; one
store with two references (top-32 and top-16) is built once and copied for each test.
"""

import dataclasses
import datetime
import hashlib
import json
import shutil
import warnings

import pytest
import tiny_lm
import torch
from cli_entry import assert_one_line_error, run_main, snapshot
from safetensors.torch import load_file, save_file

from tunelab.cli import reference as ref_cli
from tunelab.errors import TunelabError
from tunelab.eval import reference as reference_module
from tunelab.eval import refpt as refpt_module
from tunelab.eval.accuracy import score_window
from tunelab.eval.corpus import WindowSpec
from tunelab.eval.reference import ReferenceError, ReferenceStore, get_reference
from tunelab.models import CacheWarning, cache

SMALL = ["--windows", "2", "--window-len", "64", "--prefill", "32"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tiny_lm.save(tmp_path_factory.mktemp("models") / "tiny-llama"))


@pytest.fixture(scope="module")
def built(model_dir, tmp_path_factory):
    """A pristine store: (directory, key of the top-32 reference, key of the top-16 one)."""
    root = tmp_path_factory.mktemp("built") / "refs"
    store = ReferenceStore(root)
    keys = [
        get_reference(model_dir, "default", WindowSpec(64, 32, 2), top_k=k, store=store)[0].key
        for k in (32, 16)
    ]
    return root, *keys


@pytest.fixture
def refs(built, tmp_path):
    """(store directory, key, top-16 key): a fresh copy of the built store."""
    root, key, key16 = built
    shutil.copytree(root, tmp_path / "refs")
    return tmp_path / "refs", key, key16


def edit_meta(path, change):
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def row(table, first):
    """The line of a rich table whose first cell is `first`."""
    return next(line for line in table.splitlines() if line.startswith(f"│ {first} "))


def no_model(*args):
    raise AssertionError("the model was loaded before the check")


# 1, 4: metadata checked against the tensors and the request ---------------------------------------------------


def test_edited_prefill_is_a_stale_reference_error(model_dir, refs, monkeypatch, capsys):
    root, key, _ = refs
    meta = root / f"{key}.json"
    edit_meta(meta, lambda m: m["windows"].update(prefill_len=23))
    before = snapshot(root)
    for args in ([*SMALL], ["--reference", key]):
        code, out, err = run_main(
            monkeypatch, capsys, "eval", "--model", model_dir, "--preset", "bf16", *args, "--dir", root
        )
        line = assert_one_line_error(
            code, out, err, f"{key}.json", "corrupt or stale reference", "windows.prefill_len"
        )
        assert "is 23, but" in line and "built with 32" in line
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        (lambda m: m["windows"].update(prefill_len=1023), ["prefill must be in 1..62", "1023"]),
        (lambda m: m["windows"].update(prefill_len="abc"), ['windows.prefill_len is "abc"', "an integer"]),
        (lambda m: m["windows"].update(prefill_len=-1), ["got -1"]),
        (lambda m: m["windows"].pop("prefill_len"), ["no field windows.prefill_len"]),
        (lambda m: m["windows"].update(window_len=True), ["windows.window_len is true"]),
        (lambda m: m.update(top_k=16), ["topk_ids I64 [2, 63, 32]", "top_k 16"]),
        (lambda m: m.update(top_k=2), ["top_k is 2, expected at least 5"]),
        (lambda m: m["windows"].update(n_windows=3), ["tokens I64 [2, 64]", "windows.n_windows 3"]),
        (
            lambda m: m["model"].update(fingerprint="0123456789abcdef"),
            ["model.fingerprint", "0123456789abcdef"],
        ),
        (lambda m: m.update(tokenizer="x"), ["no field tokenizer.hash"]),
        (lambda m: m.update(dtype="bfloat16"), ['dtype is "bfloat16"', '"float32"']),
        (lambda m: m.update(dtype="int8"), ['dtype is "int8"']),
        (lambda m: m.update(origin="refpt"), ['origin is "refpt"']),
        (lambda m: m.update(key="zzz"), ['key is "zzz"']),
        (lambda m: m["tensors"].update(shapes={}), ["tensors.shapes"]),
        (lambda m: m["tensors"].update(sha256=5), ["tensors.sha256 is 5, expected a string"]),
    ],
)
def test_bad_metadata_fields_are_named(refs, monkeypatch, capsys, change, mentions):
    root, key, _ = refs
    edit_meta(root / f"{key}.json", change)
    before = snapshot(root)
    code, out, err = run_main(monkeypatch, capsys, "reference", "show", key, "--dir", root)
    assert_one_line_error(code, out, err, f"{key}.json", "corrupt or stale reference", *mentions)
    assert snapshot(root) == before


@pytest.mark.parametrize("content", [b"[1]", b"{not json", b"\xff\xfe\x00garbage", b""])
def test_unreadable_metadata_is_one_line(model_dir, refs, monkeypatch, capsys, content):
    root, key, _ = refs
    (root / f"{key}.json").write_bytes(content)
    before = snapshot(root)
    code, out, err = run_main(
        monkeypatch, capsys, "reference", "build", "--model", model_dir, *SMALL, "--dir", root
    )
    assert_one_line_error(code, out, err, f"{key}.json")
    assert snapshot(root) == before


def test_metadata_of_files_without_an_identity_header_is_checked_by_key(refs):
    """Tensor files written before the identity header: the key the metadata hashes to is checked instead."""
    root, key, _ = refs
    store = ReferenceStore(root)
    path, meta_path = store.tensor_path(key), store.meta_path(key)
    save_file(load_file(path), str(path), metadata={"format": reference_module.FORMAT, "key": key})
    data = path.read_bytes()
    edit_meta(
        meta_path, lambda m: m["tensors"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    )
    assert store.load(key).prefill_len == 32
    edit_meta(meta_path, lambda m: m["windows"].update(prefill_len=23))
    with pytest.raises(ReferenceError, match=r"windows\.prefill_len.*no longer hash to its key"):
        store.load(key)


def test_reference_for_another_model_or_tokenizer(refs, monkeypatch, capsys, tmp_path):
    root, key, _ = refs
    other = str(tiny_lm.save(tmp_path / "other", seed=1))
    bos = tmp_path / "bos"  # the same weights and vocabulary, a tokenizer that prepends <s>
    tiny_lm.hf_model(0).save_pretrained(bos)
    tiny_lm.tokenizer(bos=True).save_pretrained(bos)
    capsys.readouterr()  # transformers' progress bars
    before = snapshot(root)
    for model, mention in ((other, "model fingerprint"), (str(bos), "tokenizer")):
        code, out, err = run_main(
            monkeypatch,
            capsys,
            "eval",
            "--model",
            model,
            "--preset",
            "bf16",
            "--reference",
            key,
            "--dir",
            root,
        )
        assert_one_line_error(code, out, err, key, mention, "--force")
    assert snapshot(root) == before


# 2: index entries checked against the reference they name ------------------------------------------------------


def test_index_entry_pointing_at_another_reference(model_dir, refs, monkeypatch, capsys):
    root, _, key16 = refs
    index = json.loads((root / "index.json").read_text())
    for entry in index.values():
        entry["key"] = key16
    (root / "index.json").write_text(json.dumps(index))
    before = snapshot(root)
    code, out, err = run_main(
        monkeypatch, capsys, "eval", "--model", model_dir, "--preset", "bf16", *SMALL, "--dir", root
    )
    assert_one_line_error(code, out, err, "index.json", key16, "top_k is 16, not 32", "delete it")
    assert snapshot(root) == before


def test_index_entry_with_another_request(model_dir, refs, monkeypatch, capsys):
    root, _, _ = refs
    index = json.loads((root / "index.json").read_text())
    for entry in index.values():
        entry["request"]["top_k"] = 5
    (root / "index.json").write_text(json.dumps(index))
    before = snapshot(root)
    code, out, err = run_main(
        monkeypatch, capsys, "reference", "build", "--model", model_dir, *SMALL, "--dir", root
    )
    assert_one_line_error(code, out, err, "index.json", "records another request")
    assert snapshot(root) == before


# 3: explicit options against an explicit reference --------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--prefill", "20", "32"),
        ("--window-len", "128", "64"),
        ("--top-k", "5", "32"),
        ("--corpus", "x.txt", "default"),
    ],
)
def test_explicit_options_must_agree_with_the_reference(
    model_dir, refs, monkeypatch, capsys, tmp_path, option, value, expected
):
    root, key, _ = refs
    (tmp_path / "x.txt").write_text("another corpus " * 100)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ref_cli, "load_model", no_model)
    before = snapshot(root)
    code, out, err = run_main(
        monkeypatch, capsys, "eval", "--preset", "bf16", "--reference", key, option, value, "--dir", root
    )
    assert_one_line_error(
        code, out, err, f"{option} {value} disagrees with reference {key}", f"{option} {expected}"
    )
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "reference",
        "export",
        "--key",
        key,
        option,
        value,
        "--dir",
        root,
        "-o",
        tmp_path / "x.refpt",
    )
    assert_one_line_error(code, out, err, f"{option} {value} disagrees", f"{option} {expected}")
    assert snapshot(root) == before and not (tmp_path / "x.refpt").exists()


def test_explicit_options_that_agree_are_fine_and_a_refpt_is_checked_before_import(
    model_dir, refs, monkeypatch, capsys, tmp_path
):
    root, key, _ = refs
    code, out, err = run_main(
        monkeypatch, capsys, "eval", "--model", model_dir, "--preset", "bf16", "--reference", key, "--prefill", "32",
        "--window-len", "64", "--json", "--dir", root,
    )  # fmt: skip
    assert code in (0, None), err
    assert json.loads(out)["n_positions"] == 2 * 31
    refpt = tmp_path / "x.refpt"
    assert run_main(monkeypatch, capsys, "reference", "export", "--key", key, "--dir", root, "-o", refpt)[
        0
    ] in (
        0,
        None,
    )
    before = snapshot(root)
    for args, mention in ((["--prefill", "20"], "--prefill 32"), (["--windows", "2"], "1 window, not 2")):
        code, out, err = run_main(
            monkeypatch, capsys, "eval", "--model", model_dir, "--preset", "bf16", "--reference", refpt, *args,
            "--dir", root,
        )  # fmt: skip
        assert_one_line_error(code, out, err, str(refpt), mention)
    assert snapshot(root) == before  # nothing imported


# 5: corrupt files ------------------------------------------------------------------------------------------------


def test_garbage_tensor_file_with_a_matching_hash(model_dir, refs, monkeypatch, capsys):
    root, key, _ = refs
    tensors = root / f"{key}.safetensors"
    garbage = bytes(range(256)) * 3
    tensors.write_bytes(garbage)
    sha = hashlib.sha256(garbage).hexdigest()
    edit_meta(root / f"{key}.json", lambda m: m["tensors"].update(sha256=sha, bytes=len(garbage)))
    before = snapshot(root)
    code, out, err = run_main(
        monkeypatch, capsys, "eval", "--model", model_dir, "--preset", "bf16", *SMALL, "--dir", root
    )
    assert_one_line_error(code, out, err, f"{key}.safetensors: unreadable", "--force")
    assert snapshot(root) == before


def test_truncated_tensor_file(model_dir, refs, monkeypatch, capsys):
    root, key, _ = refs
    tensors = root / f"{key}.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    before = snapshot(root)
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "eval",
        "--model",
        model_dir,
        "--preset",
        "bf16",
        "--reference",
        key,
        "--dir",
        root,
    )
    assert_one_line_error(code, out, err, f"{key}.safetensors: truncated or modified (100 bytes")
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "content",
    [b"not a torch file", b"PK\x03\x04garbage", b"\x80\x04garbage", "pickle", "truncated"],
)
def test_garbage_refpt(model_dir, refs, monkeypatch, capsys, tmp_path, content):
    root, _, _ = refs
    path = tmp_path / "bad.refpt"
    if content == "pickle":  # a Python object torch refuses to unpickle
        torch.save({"top5_tokens": datetime.date(2020, 1, 1)}, path)
    elif content == "truncated":
        torch.save({"top5_tokens": torch.zeros(3, 5)}, path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    monkeypatch.setattr(ref_cli, "load_model", no_model)
    before = snapshot(root)
    for args in (["reference", "import", path], ["eval", "--preset", "bf16", "--reference", path]):
        code, out, err = run_main(monkeypatch, capsys, *args, "--dir", root)
        assert_one_line_error(code, out, err, "bad.refpt: not a readable .refpt file")
    assert snapshot(root) == before


def test_corrupt_imported_reference_is_reimported_with_force(model_dir, refs, monkeypatch, capsys, tmp_path):
    root, key, _ = refs
    refpt = tmp_path / "x.refpt"
    assert run_main(monkeypatch, capsys, "reference", "export", "--key", key, "--dir", root, "-o", refpt)[
        0
    ] in (
        0,
        None,
    )
    code, out, _ = run_main(
        monkeypatch, capsys, "reference", "import", refpt, "--model", model_dir, "--dir", root
    )
    imported = out.split()[1]
    edit_meta(root / f"{imported}.json", lambda m: m["windows"].update(prefill_len=20))
    code, out, err = run_main(
        monkeypatch, capsys, "reference", "import", refpt, "--model", model_dir, "--dir", root
    )
    assert_one_line_error(code, out, err, f"{imported}.json", "windows.prefill_len is 20")
    code, out, err = run_main(
        monkeypatch, capsys, "reference", "import", refpt, "--model", model_dir, "--force", "--dir", root
    )
    assert code in (0, None) and "prefill 32" in out


def test_corrupt_model_cache_entries_are_warned_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    source = tmp_path / "model.gguf"
    source.write_bytes(b"weights")
    key, identity = cache.entry_key("m", "gguf", [source])

    def write(directory):
        (directory / "config.json").write_text("{}")
        (directory / "model.safetensors").write_bytes(b"tensors")

    entry = cache.store(key, identity, write)
    other = entry.parent / "other-0123"  # another entry with a corrupt manifest: left alone, no crash
    other.mkdir()
    (other / cache.MANIFEST).write_text(json.dumps({"source": "x"}))
    manifests = [
        "not json",
        "[1]",
        json.dumps({"format": 1, "files": {"config.json": 5}}),
        json.dumps({"format": 1, "files": {"../config.json": [2, "x"], "m.safetensors": [1, "y"]}}),
        json.dumps({"format": 1, "files": []}),
        json.dumps({"format": "x", "files": {}}),
    ]
    for manifest in manifests:
        (entry / cache.MANIFEST).write_text(manifest)
        with pytest.warns(CacheWarning, match=r"is unusable \(.*\); rebuilding it") as caught:
            assert cache.lookup(key) is None
        assert len(caught) == 1 and "\n" not in str(caught[0].message)
        assert cache.store(key, identity, write) == entry
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)
            assert cache.lookup(key) == entry
    assert other.is_dir()


def test_model_cache_root_that_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file")
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(TunelabError, match="cannot write the model cache"):
        cache.store("k", {"files": []}, lambda directory: None)


# 6: the index is refused, never rewritten; writes go through atomic_write -----------------------------------------


@pytest.mark.parametrize(
    ("content", "mention"),
    [
        (b"[1", "not a reference index"),
        (b"[1]", "a JSON list"),
        (b'{"a": {"key": "../x", "request": {}}}', 'entry "a" is not'),
        (b'{"a": 5}', 'entry "a" is not'),
        (b"\xff\xfe\xfa", "not a reference index"),
    ],
)
def test_invalid_index_is_refused_and_left_alone(model_dir, refs, monkeypatch, capsys, content, mention):
    root, _, _ = refs
    (root / "index.json").write_bytes(content)
    monkeypatch.setattr(ref_cli, "load_model", no_model)
    before = snapshot(root)
    for args in (
        ["reference", "build", "--model", model_dir, *SMALL],
        ["reference", "build", "--model", model_dir, *SMALL, "--force"],
    ):
        code, out, err = run_main(monkeypatch, capsys, *args, "--dir", root)
        assert_one_line_error(code, out, err, "index.json", mention, "fix or delete it")
    assert snapshot(root) == before


def test_every_file_is_written_through_atomic_write(model_dir, tmp_path, monkeypatch):
    written = []

    def spy(path, data):
        written.append(path.name)
        return atomic(path, data)

    atomic = reference_module.atomic_write
    monkeypatch.setattr(reference_module, "atomic_write", spy)
    monkeypatch.setattr(refpt_module, "atomic_write", spy)
    store = ReferenceStore(tmp_path / "refs")
    ref, _, _ = get_reference(model_dir, "default", WindowSpec(64, 32, 1), top_k=5, store=store)
    refpt_module.export_refpt(ref, tmp_path / "x.refpt")
    assert written == [f"{ref.key}.safetensors", f"{ref.key}.json", "index.json", "x.refpt"]
    assert sorted(p.name for p in (tmp_path / "refs").iterdir()) == sorted(written[:3])


# 7: the listing marks corrupt references -------------------------------------------------------------------------


def test_show_marks_corrupt_references(refs, monkeypatch, capsys):
    root, key, key16 = refs
    edit_meta(root / f"{key}.json", lambda m: m["windows"].update(prefill_len=23))
    shutil.copy(root / f"{key16}.safetensors", root / "0123orphan.safetensors")
    (root / "0456garbage.json").write_bytes(b"\xff[")
    before = snapshot(root)
    code, out, err = run_main(monkeypatch, capsys, "reference", "show", "--dir", root)
    assert code in (0, None), err
    status = {
        name: row(out, name).split("│")[2].strip() for name in (key, key16, "0123orphan", "0456garbage")
    }
    assert status[key16] == "ok"
    assert all(status[name].startswith("corrupt:") for name in (key, "0123orphan", "0456garbage")), status
    assert snapshot(root) == before


# 8: directories and output files ---------------------------------------------------------------------------------


def test_build_dir_that_is_a_file_fails_before_the_model_loads(model_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(ref_cli, "load_model", no_model)
    for directory in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        code, out, err = run_main(
            monkeypatch, capsys, "reference", "build", "--model", model_dir, *SMALL, "--dir", directory
        )
        assert_one_line_error(code, out, err, str(directory), "not a directory", "is a file")
    assert (tmp_path / "afile").read_text() == "x"


def test_export_errors_leave_files_alone(refs, monkeypatch, capsys, tmp_path):
    root, key, _ = refs
    keep = tmp_path / "keep.refpt"
    keep.write_bytes(b"keep")
    (tmp_path / "adir").mkdir()
    before = snapshot(root, keep)
    cases = [
        (tmp_path / "missing" / "x.refpt", [], "does not exist"),
        (tmp_path / "adir", [], "is a directory"),
        (keep, ["--window", "5"], "has windows 0..1, not 5"),
        (keep, ["--window", "-1"], "not -1"),
        (root / f"{key}.safetensors", [], "inside the reference directory"),
        (root / "index.json", [], "inside the reference directory"),
    ]
    for output, args, mention in cases:
        code, out, err = run_main(
            monkeypatch, capsys, "reference", "export", "--key", key, *args, "--dir", root, "-o", output
        )
        assert_one_line_error(code, out, err, mention)
    assert snapshot(root, keep) == before
    assert not (tmp_path / "missing").exists() and not any((tmp_path / "adir").iterdir())


# 9: hostile options and inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (["--top-k", "0"], "top-k must be at least 5 (tt-metal's top-5), got 0"),
        (["--top-k", "-3"], "got -3"),
        (["--dtype", "float8"], "unknown reference dtype 'float8'"),
        (["--windows", "0"], "at least 1, got 0"),
        (["--prefill", "64"], "prefill must be in 1..62"),
        (["--prefill", "-1"], "prefill must be in 1..62"),
        (["--window-len", "2"], "at least 3 tokens"),
    ],
)
def test_bad_options_fail_before_the_model_loads(model_dir, refs, monkeypatch, capsys, args, mention):
    root, _, _ = refs
    monkeypatch.setattr(ref_cli, "load_model", no_model)
    before = snapshot(root)
    options = dict(zip(SMALL[::2], SMALL[1::2], strict=True)) | dict(zip(args[::2], args[1::2], strict=True))
    flat = [item for pair in options.items() for item in pair]
    code, out, err = run_main(
        monkeypatch, capsys, "reference", "build", "--model", model_dir, *flat, "--dir", root
    )
    assert_one_line_error(code, out, err, mention)
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (["--window-len", "1024", "--prefill", "512", "--windows", "1"], "exceed tiny-llama's 512 positions"),
        (["--top-k", "100000"], "exceeds tiny-llama's vocabulary (320)"),
        (["--windows", "1000000000000"], "not the 1000000000000 asked for"),
    ],
)
def test_options_beyond_the_model_or_corpus(model_dir, refs, monkeypatch, capsys, args, mention):
    root, _, _ = refs
    before = snapshot(root)
    options = dict(zip(SMALL[::2], SMALL[1::2], strict=True)) | dict(zip(args[::2], args[1::2], strict=True))
    flat = [item for pair in options.items() for item in pair]
    for command in (["reference", "build"], ["eval", "--preset", "bf16"]):
        code, out, err = run_main(monkeypatch, capsys, *command, "--model", model_dir, *flat, "--dir", root)
        assert_one_line_error(code, out, err, mention)
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("name", "content", "mention"),
    [
        ("bad.txt", b"\xff\xfe\xfa text", "cannot read it as UTF-8 text"),
        ("bad.json", b"\xff\xfe\xfa", "cannot read it as JSON"),
        ("spec.json", b'{"kind": "text", "path": 5}', "path must be a string, got 5"),
        ("kind.json", b'{"kind": ["text"]}', 'kind must be a string, got ["text"]'),
        ("empty.txt", b"", "has 0 tokens"),
    ],
)
def test_bad_corpus_files(model_dir, refs, monkeypatch, capsys, tmp_path, name, content, mention):
    root, _, _ = refs
    (tmp_path / name).write_bytes(content)
    before = snapshot(root)
    code, out, err = run_main(
        monkeypatch, capsys, "reference", "build", "--model", model_dir, *SMALL, "--corpus", tmp_path / name,
        "--dir", root,
    )  # fmt: skip
    assert_one_line_error(code, out, err, name, mention)
    assert snapshot(root) == before


def test_reference_ids_outside_the_candidates_vocabulary(built):
    root, key, _ = built
    ref = ReferenceStore(root).load(key).select(1)
    logits = torch.zeros(ref.n_decode, tiny_lm.VOCAB)
    bad_tokens = ref.tokens.clone()
    bad_tokens[0, -1] = tiny_lm.VOCAB + 7
    bad_ids = ref.topk_ids.clone()
    bad_ids[0, -1, 0] = -1
    for change, mention in (({"tokens": bad_tokens}, "token 327"), ({"topk_ids": bad_ids}, "top-k id -1")):
        with pytest.raises(TunelabError, match=f"reference {mention} is outside"):
            score_window(logits, dataclasses.replace(ref, **change), 0)
