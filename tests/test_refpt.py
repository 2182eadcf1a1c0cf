"""tt-metal .refpt files: the exact format, export -> import round trip, and bad files."""

import pytest
import tiny_lm
import torch

from tunelab.eval.accuracy import evaluate
from tunelab.eval.corpus import CORPORA, WindowSpec
from tunelab.eval.reference import ReferenceError, ReferenceStore, build_reference
from tunelab.eval.refpt import export_refpt, import_refpt, read_refpt


@pytest.fixture(scope="module")
def model():
    return tiny_lm.loaded()


@pytest.fixture
def built(model, tmp_path):
    store = ReferenceStore(tmp_path / "refs")
    ref = build_reference(model, CORPORA["default"], WindowSpec(64, 32, 2), store=store)
    return ref, store


def test_export_writes_tt_metal_format(built, tmp_path):
    ref, _ = built
    path = export_refpt(ref, tmp_path / "tiny.refpt", window=1)
    data = torch.load(path, weights_only=True)
    assert set(data) == {"top5_tokens", "reference_tokens"}
    assert data["top5_tokens"].dtype == data["reference_tokens"].dtype == torch.int64
    assert data["top5_tokens"].shape == (63, 5) and data["reference_tokens"].shape == (1, 64)
    assert torch.equal(data["top5_tokens"], ref.topk_ids[1, :, :5])
    assert torch.equal(data["reference_tokens"][0], ref.tokens[1])


def test_round_trip_and_metrics_without_kl(built, model, tmp_path):
    ref, store = built
    path = export_refpt(ref, tmp_path / "tiny.refpt")
    imported = import_refpt(path, model, store)
    assert torch.equal(imported.tokens, ref.tokens[:1]) and torch.equal(
        imported.topk_ids, ref.topk_ids[:1, :, :5]
    )
    assert (imported.window_len, imported.prefill_len, imported.top_k) == (64, 32, 5)
    assert imported.meta["origin"] == "refpt" and not imported.has_logprobs
    assert import_refpt(path, model, store).key == imported.key  # idempotent
    reloaded = store.load(imported.key)
    assert torch.equal(reloaded.topk_ids, imported.topk_ids) and reloaded.topk_logprobs is None
    again = export_refpt(reloaded, tmp_path / "again.refpt")
    first, second = torch.load(path, weights_only=True), torch.load(again, weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)

    candidate = torch.randn(2, 31, tiny_lm.VOCAB, generator=torch.Generator().manual_seed(0))
    ours = evaluate(ref.select(1), lambda tokens, prefill: candidate[0])
    theirs = evaluate(reloaded, lambda tokens, prefill: candidate[0])
    assert (theirs.top1, theirs.top5, theirs.ppl) == (ours.top1, ours.top5, ours.ppl)
    assert ours.kl is not None and theirs.kl is None


def test_bad_files_are_one_line_errors(model, tmp_path):
    path = tmp_path / "bad.refpt"
    torch.save({"top5": torch.zeros(3, 5)}, path)
    with pytest.raises(ReferenceError, match="holds 'top5_tokens' and 'reference_tokens'"):
        read_refpt(path)
    torch.save(
        {"top5_tokens": torch.zeros(9, 5, dtype=torch.int64), "reference_tokens": torch.zeros(1, 16)}, path
    )
    with pytest.raises(ReferenceError, match="reference_tokens must be an integer tensor"):
        read_refpt(path)
    torch.save(
        {
            "top5_tokens": torch.zeros(9, 5, dtype=torch.int64),
            "reference_tokens": torch.zeros(1, 16, dtype=torch.int64),
        },
        path,
    )
    with pytest.raises(ReferenceError, match=r"shape \(9, 5\), expected \[15, 5\]"):
        read_refpt(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(ReferenceError, match=r"not a readable \.refpt"):
        read_refpt(path)
    with pytest.raises(ReferenceError, match=r"no such file"):
        read_refpt(tmp_path / "missing.refpt")
    big = {
        "top5_tokens": torch.full((15, 5), 128000),
        "reference_tokens": torch.zeros(1, 16, dtype=torch.int64),
    }
    torch.save(big, path)
    with pytest.raises(ReferenceError, match=r"outside tiny-llama's vocabulary.*another model"):
        import_refpt(path, model, ReferenceStore(tmp_path / "refs"))
