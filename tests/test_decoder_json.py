"""decoder_config JSON: complete writing, tt-transformers' reading semantics, findings, one-line errors."""

import json
from pathlib import Path

import pytest

from tunelab.errors import ConfigError
from tunelab.interop import parse_decoder_config, read_decoder_config, to_decoder_config, write_decoder_config
from tunelab.model_presets import model_preset
from tunelab.precision import DecoderPrecision, MathFidelity, ModelPrecision, OpGroup, Precision, TensorGroup
from tunelab.presets import generic_accuracy, generic_performance

CONFIGURATIONS = Path(__file__).parent / "configurations"


def _parse(data, default=generic_performance):
    return parse_decoder_config(data, default, source="t.json")


def test_written_file_is_complete_and_reads_back_unchanged(tmp_path):
    preset = model_preset("performance", "Llama-3.1-8B-Instruct", 32)
    write_decoder_config(preset, tmp_path / "perf.json")
    data = json.loads((tmp_path / "perf.json").read_text())
    assert list(data["decoders"]) == [str(i) for i in range(32)]
    for entry in data["decoders"].values():
        # ACTIVATION is mixed in this preset, so it is omitted; every other key is present, upper case.
        assert list(entry["precision_cfg"]) == ["FF1_FF3", "FF2", "WQKV", "WO", "KV_CACHE"]
        assert list(entry["fidelity_cfg"]) == [op.name for op in OpGroup]
    assert data["decoders"]["31"]["precision_cfg"]["FF1_FF3"] == "BFP8"
    parsed = read_decoder_config(tmp_path / "perf.json", generic_accuracy)
    assert parsed.precision == preset
    assert parsed.findings(32) == []


def test_activation_written_when_not_mixed():
    config = ModelPrecision.uniform(DecoderPrecision(activation=Precision.BFP8), 2)
    assert to_decoder_config(config)["decoders"]["1"]["precision_cfg"]["ACTIVATION"] == "BFP8"
    assert _parse(to_decoder_config(config)).precision == config


@pytest.mark.parametrize(("index", "n_fast"), [(0, 0), (1, 2), (2, 4), (3, 6)])
def test_tt_configurations_fixtures(index, n_fast):
    parsed = read_decoder_config(CONFIGURATIONS / f"conf{index}.json", generic_performance)
    assert parsed.precision.n_layers == 16
    slow = DecoderPrecision(
        wo=Precision.BFP4,
        activation=Precision.BFP8,
        li_ff1_ff3=MathFidelity.HIFI2,
        sdpa_decode=MathFidelity.HIFI2_NA,
        li_o_decode=MathFidelity.LOFI,
        li_o_prefill=MathFidelity.LOFI,
    )  # LI_FF2, LI_QKV_DECODE and ACCURACY are unlisted: hard defaults
    fast = slow.overlay(
        {TensorGroup.FF1_FF3: Precision.BFP4, TensorGroup.FF2: Precision.BFP4},
        {OpGroup.LI_FF1_FF3: MathFidelity.LOFI, OpGroup.LI_FF2: MathFidelity.LOFI},
    )
    assert parsed.precision.decoders == (slow,) * (16 - n_fast) + (fast,) * n_fast
    notes = [f.message for f in parsed.findings(16)]
    assert len(notes) == 16 and all("fidelity_cfg is partial" in n for n in notes)


def test_unlisted_decoders_get_generic_preset_and_count_is_max_id_plus_one():
    parsed = _parse({"decoders": {"3": {"precision_cfg": {"FF2": "BFP4"}}}})
    assert parsed.precision.n_layers == 4
    assert parsed.precision.decoders[:3] == (generic_performance("model"),) * 3
    # precision_cfg overlays the hard defaults (FF1_FF3 back to BFP8); absent fidelity_cfg = the preset's (LOFI).
    assert parsed.precision[3] == DecoderPrecision(ff2=Precision.BFP4, li_ff1_ff3=MathFidelity.LOFI)
    accuracy = parse_decoder_config({"decoders": {"1": {}}}, generic_accuracy)
    assert accuracy.precision.decoders == (generic_accuracy("model"),) * 2


def test_listed_decoder_without_precision_cfg_is_an_error():
    # tt-transformers main substitutes the preset's tensor settings, whose ACTIVATION None fails its validation.
    parsed = _parse({"decoders": {"0": {"precision_cfg": {}}, "1": {"fidelity_cfg": {}}, "2": {}}})
    errors = [f.message for f in parsed.findings(3) if f.level == "error"]
    assert len(errors) == 1 and errors[0].startswith("decoders 1-2 have no precision_cfg")


def test_findings_for_too_few_and_out_of_range_decoders():
    listed = {"precision_cfg": {}}
    parsed = _parse({"decoders": {"0": listed, "1": listed}})
    errors = [f for f in parsed.findings(4) if f.level == "error"]
    assert len(errors) == 1 and "KeyError for decoders 2..3" in errors[0].message
    parsed = _parse({"decoders": {"5": listed, "7": listed}})
    levels = {f.level: f.message for f in parsed.findings(6) if "partial" not in f.message}
    assert "decoder ids 7 are beyond the model's 6 decoders" in levels["warning"]
    assert "decoders 0-4 are not listed" in levels["note"]
    assert parsed.fit(6, DecoderPrecision()).n_layers == 6
    assert parsed.fit(10, DecoderPrecision()).decoders[8:] == (DecoderPrecision(),) * 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], 'top level must be an object with a "decoders" key'),
        ({"decoder": {}}, 'top level must be an object with a "decoders" key'),
        ({"decoders": {}}, '"decoders" must be a non-empty object'),
        ({"decoders": {"x": {}}}, "decoder id 'x' is not an integer"),
        ({"decoders": {"-1": {}}}, "decoder id '-1' is negative"),
        ({"decoders": {"1": {}, "01": {}}}, "decoder 1: listed twice"),
        ({"decoders": {"0": []}}, "decoder 0: must be an object"),
        ({"decoders": {"0": {"precison_cfg": {}}}}, "decoder 0: unknown key 'precison_cfg'"),
        (
            {"decoders": {"2": {"precision_cfg": {"FF4": "BFP8"}}}},
            "decoder 2: precision_cfg: unknown key 'FF4'",
        ),
        (
            {"decoders": {"2": {"precision_cfg": {"WO": "bfp8"}}}},
            "decoder 2: precision_cfg: WO: invalid value 'bfp8' (expected one of BFP4, BFP8, BF16)",
        ),
        (
            {"decoders": {"0": {"precision_cfg": {"ACTIVATION": "MIXED"}}}},
            "ACTIVATION: invalid value 'MIXED' (expected one of BFP4, BFP8, BF16); omit ACTIVATION to keep it mixed",
        ),
        ({"decoders": {"0": {"precision_cfg": {"WO": None}}}}, "WO: invalid value null"),
        (
            {"decoders": {"4": {"fidelity_cfg": {"LI_FF2": "HIFI3"}}}},
            "decoder 4: fidelity_cfg: LI_FF2: invalid value 'HIFI3'",
        ),
    ],
)
def test_malformed_content_gives_one_line_error(data, message):
    with pytest.raises(ConfigError) as info:
        _parse(data)
    text = str(info.value)
    assert text.startswith("t.json") and message in text and "\n" not in text


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.json: file not found"):
        read_decoder_config(tmp_path / "missing.json", generic_performance)
    bad = tmp_path / "bad.json"
    bad.write_text('{"decoders": {"0": }')
    with pytest.raises(ConfigError, match=r"bad.json: malformed JSON: .* at line 1 column 20"):
        read_decoder_config(bad, generic_performance)
