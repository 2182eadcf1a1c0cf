"""Reference logits on a tiny random Llama: what is stored, the content key, the cache, integrity on load."""

import json

import pytest
import tiny_lm
import torch

from tunelab.eval import reference as reference_module
from tunelab.eval.corpus import CORPORA, WindowSpec, make_windows
from tunelab.eval.reference import (
    ReferenceError,
    ReferenceStore,
    build_reference,
    check_fingerprint,
    compute_reference,
    find_reference,
    get_reference,
    reference_request,
)

SPEC = WindowSpec(64, 32, 3)


@pytest.fixture(scope="module")
def model():
    return tiny_lm.loaded()


@pytest.fixture
def store(tmp_path):
    return ReferenceStore(tmp_path / "refs")


def build(model, store, spec=SPEC, **kwargs):
    return build_reference(model, CORPORA["default"], spec, corpus_name="default", store=store, **kwargs)


def test_stored_summaries_match_the_hf_logits(model, store):
    ref = build(model, store, top_k=8)
    windows = make_windows(CORPORA["default"], model.tokenizer, SPEC)
    assert ref.tokens.tolist() == windows and ref.tokens.dtype == torch.int64
    assert ref.topk_ids.shape == (3, 63, 8) and ref.topk_logprobs.shape == (3, 63, 8)
    assert ref.logsumexp.shape == ref.target_logprobs.shape == (3, 63)
    logits = model.hf_model(ref.tokens[1:2, :-1]).logits[0]  # row p predicts token p + 1
    logprobs = torch.log_softmax(logits, -1)
    assert torch.equal(ref.topk_ids[1, :, 0], logits.argmax(-1))
    torch.testing.assert_close(ref.topk_logprobs[1], logprobs.gather(-1, ref.topk_ids[1]))
    torch.testing.assert_close(ref.logsumexp[1], logits.logsumexp(-1))
    torch.testing.assert_close(ref.target_logprobs[1], logprobs.gather(-1, ref.tokens[1, 1:, None])[:, 0])
    assert (ref.prefill_len, ref.n_decode, ref.decode_rows) == (32, 31, slice(32, 63))


def test_metadata_beside_the_tensors(model, store):
    ref = build(model, store)
    meta = json.loads(store.meta_path(ref.key).read_text())
    assert store.tensor_path(ref.key).exists()
    assert meta["key"] == ref.key and meta["model"]["fingerprint"] == model.fingerprint
    assert meta["windows"] == {**meta["windows"], "window_len": 64, "prefill_len": 32, "n_windows": 3}
    assert meta["top_k"] == 32 and meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert meta["corpus"]["name"] == "default" and "'\\n\\n'" in meta["corpus"]["stream"]
    assert len(meta["tensors"]["sha256"]) == 64 and meta["tensors"]["bytes"] > 0


def test_content_key_reuses_and_distinguishes(model, store, monkeypatch):
    first = build(model, store)

    def no_compute(*args, **kwargs):
        raise AssertionError("recomputed a cached reference")

    monkeypatch.setattr(reference_module, "compute_reference", no_compute)
    assert build(model, store).key == first.key
    monkeypatch.undo()
    keys = {
        first.key,
        build(model, store, top_k=16).key,
        build(model, store, spec=WindowSpec(64, 20, 3)).key,
        build(model, store, spec=WindowSpec(64, 32, 2)).key,
        build(model, store, dtype="bfloat16").key,
    }
    assert len(keys) == 5
    other = tiny_lm.loaded(seed=1)
    assert build(other, store).key not in keys


def test_request_index_finds_without_the_model(model, store):
    request = reference_request({"kind": "test", "location": "tiny"}, CORPORA["default"], SPEC)
    assert find_reference(store, request) is None
    ref = build(model, store, request=request)
    found = find_reference(store, request)
    assert found is not None and found.key == ref.key
    assert torch.equal(found.topk_ids, ref.topk_ids) and torch.equal(found.topk_logprobs, ref.topk_logprobs)
    other = reference_request({"kind": "test", "location": "tiny"}, CORPORA["default"], SPEC, top_k=16)
    assert find_reference(store, other) is None


def test_corrupted_or_truncated_files_are_clear_errors_and_force_rebuilds(model, store):
    ref = build(model, store)
    path = store.tensor_path(ref.key)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ReferenceError, match=r"\.safetensors: content hash mismatch.*--force"):
        store.load(ref.key)
    path.write_bytes(bytes(data[:-100]))
    with pytest.raises(ReferenceError, match=r"truncated or modified \(\d+ bytes, expected \d+\).*--force"):
        store.load(ref.key)
    with pytest.raises(ReferenceError, match="--force"):
        build(model, store)
    rebuilt = build(model, store, force=True)
    assert rebuilt.key == ref.key and store.load(ref.key).topk_ids.shape == ref.topk_ids.shape
    store.meta_path(ref.key).write_text("{not json")
    with pytest.raises(ReferenceError, match=r"\.json: unreadable metadata.*--force"):
        store.load(ref.key)


def test_store_listing_prefixes_and_window_selection(model, store):
    ref = build(model, store)
    assert [m["key"] for m in store.list()] == [ref.key]
    assert store.resolve_key(ref.key[:6]) == ref.key
    with pytest.raises(ReferenceError, match="no reference 'zzz'"):
        store.resolve_key("zzz")
    two = ref.select(2)
    assert two.n_windows == 2 and torch.equal(two.topk_ids, ref.topk_ids[:2])
    with pytest.raises(ReferenceError, match="has 3 windows, not 4"):
        ref.select(4)


def test_other_dtype_leaves_the_model_untouched(model):
    before = {name: t.clone() for name, t in model.hf_model.state_dict().items()}
    storages = [p.data_ptr() for p in model.hf_model.parameters()]
    tokens = torch.tensor(make_windows(CORPORA["default"], model.tokenizer, WindowSpec(64, 32, 1)))
    out = compute_reference(model.hf_model, tokens, top_k=5, dtype="bfloat16")
    assert out["topk_ids"].shape == (1, 63, 5) and out["topk_logprobs"].dtype == torch.float32
    assert [p.data_ptr() for p in model.hf_model.parameters()] == storages
    after = model.hf_model.state_dict()
    assert all(
        after[name].dtype == torch.float32 and torch.equal(after[name], t) for name, t in before.items()
    )
    with pytest.raises(ReferenceError, match="at least 5"):
        compute_reference(model.hf_model, tokens, top_k=4)


@pytest.mark.slow
def test_smollm2_reference_emulation_and_refpt(smollm2, tmp_path):
    """The embedded model end to end on one short window: reference, the emulator at two presets, .refpt."""
    from tunelab.backends.emulated import EmulatorOptions, emulator_for
    from tunelab.eval.accuracy import evaluate
    from tunelab.eval.refpt import export_refpt, import_refpt
    from tunelab.model_presets import model_preset

    store = ReferenceStore(tmp_path)
    ref = build_reference(smollm2, CORPORA["default"], WindowSpec(256, 128, 1), store=store)
    assert ref.topk_ids.shape == (1, 255, 32) and ref.meta["model"]["name"] == "SmolLM2-135M-Instruct"
    emulator = emulator_for(smollm2, EmulatorOptions(), "cpu")
    results = {}
    for preset in ("bf16", "performance"):
        precision = model_preset(preset, smollm2.config.name, smollm2.config.n_layers)
        results[preset] = evaluate(ref, lambda t, p, c=precision: emulator.teacher_forced(t, p, c))
    bf16, perf = results["bf16"], results["performance"]
    assert bf16.top1_tie_aware >= 0.9 and bf16.top5 >= 0.98 and bf16.kl < perf.kl
    assert bf16.ppl == pytest.approx(bf16.reference_ppl, rel=0.05)
    imported = import_refpt(export_refpt(ref, tmp_path / "smollm2.refpt"), smollm2, store)
    assert torch.equal(imported.topk_ids[0], ref.topk_ids[0, :, :5]) and imported.prefill_len == 128


def test_get_reference_loads_only_on_a_miss_and_checks_the_fingerprint(model, store):
    calls = []

    def load(source, layers):
        calls.append(("load", source, layers))
        return model

    options = dict(store=store, load_model=load, on_load=lambda source: calls.append(("on_load", source)))
    windows = []
    ref, loaded, hit = get_reference(
        "tunelab-tests/tiny-llama", "default", SPEC, **options, on_windows=windows.append
    )
    assert (loaded, hit, windows) == (model, False, [3])
    assert calls == [("on_load", "tunelab-tests/tiny-llama"), ("load", "tunelab-tests/tiny-llama", None)]
    again, loaded, hit = get_reference("tunelab-tests/tiny-llama", "default", SPEC, **options)
    assert (again.key, loaded, hit, len(calls)) == (ref.key, None, True, 2)
    check_fingerprint(ref, model, "tunelab-tests/tiny-llama")
    with pytest.raises(ReferenceError, match="rebuild it with `tunelab reference build --model x --force`"):
        check_fingerprint(ref, tiny_lm.loaded(seed=1), "x")
