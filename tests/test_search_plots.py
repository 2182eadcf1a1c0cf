"""Study frames, figures, offline HTML pages (checked in headless Chromium) and the analysis notebook."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import tiny_lm

from tunelab.errors import TunelabError
from tunelab.evaluator import EvaluationSettings, emulated_evaluator
from tunelab.precision import OpGroup, TensorGroup
from tunelab.search.frames import load_study_frame, sensitivity_frame, trials_frame
from tunelab.search.plots import (
    FORMAT_COLOURS,
    FRONT_COLOUR,
    SENSITIVITY_ATTR,
    front_figure,
    hypervolume_figure,
    precision_map_figure,
    sensitivity_figure,
    write_study_plots,
)
from tunelab.search.study import StudyRunner, StudySpec, create_study, front, load_spec, trial_records

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
TRIALS = 12
PROFILE = "test-profile"


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A 12-trial per-decoder study of the tiny Llama, one front member verified, a sensitivity profile stored."""
    root = tmp_path_factory.mktemp("plots")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TUNELAB_CACHE_DIR", str(root / "cache"))
        model = tiny_lm.save(root / "tiny-llama")
        settings = EvaluationSettings(
            model=str(model), mesh_device="N150", windows=2, window_len=64, prefill_len=32
        )
        evaluator, _ = emulated_evaluator(settings, reference_dir=root / "refs")
        url = f"sqlite:///{root / 'study.db'}"
        create_study(StudySpec(name="tiny", evaluation=settings, space={"granularity": "per-decoder"}), url)
        runner = StudyRunner("tiny", url, evaluator=evaluator)
        runner.run(TRIALS)
    records = trial_records(runner.study, runner.store)
    target = front(records, runner.spec)[0].record
    verified = dataclasses.replace(target.metrics, top1=target.metrics.top1 - 0.05, evaluator="careful")
    runner.store.record_verification("tiny", target.number, verified, flagged=False)
    baseline = records[0].metrics
    for layer in (0, 1):
        for tensor, lowered in (("FF1_FF3", "BFP4/LOFI"), ("KV_CACHE", "BFP4"), ("FF2", "BF16/HIFI4")):
            lowered_metrics = dataclasses.replace(
                baseline,
                kl=baseline.kl + 0.01 * (layer + 1),
                top1=baseline.top1 - 0.02,
                tok_s_u=baseline.tok_s_u + 1,
            )
            runner.store.record_sensitivity(PROFILE, layer, tensor, lowered, lowered_metrics, baseline)
    runner.study.set_user_attr(SENSITIVITY_ATTR, PROFILE)
    records = trial_records(runner.study, runner.store)
    return SimpleNamespace(
        root=root,
        url=url,
        runner=runner,
        records=records,
        members=front(records, runner.spec),
        verified=target,
    )


def test_trials_frame_rows_and_decoder_columns(tiny_study):
    records, members = tiny_study.records, tiny_study.members
    frame = trials_frame(records, tiny_study.runner.spec)
    assert len(records) == TRIALS and list(frame["trial"]) == [r.number for r in records]
    for column in (
        "preset",
        "kind",
        "top1_low",
        "top1_high",
        "dram_gb",
        "verified_top1",
        "on_front",
        "config_key",
    ):
        assert column in frame.columns
    assert set(frame.loc[frame["on_front"], "trial"]) == {m.record.number for m in members}
    assert set(frame["preset"].dropna()) == {"defaults", "performance", "accuracy"}
    assert (frame["top1_low"] <= frame["top1"]).all() and (frame["top1"] <= frame["top1_high"]).all()
    verified = frame.set_index("trial")["verified_top1"]
    assert verified[tiny_study.verified.number] == pytest.approx(tiny_study.verified.metrics.top1 - 0.05)
    assert verified.drop(tiny_study.verified.number).isna().all()
    decoder_columns = [c for c in frame.columns if c.startswith("d0")]
    groups = [t.name for t in TensorGroup if t is not TensorGroup.ACTIVATION] + [o.name for o in OpGroup]
    assert decoder_columns == [f"d{d:02d}.{g}" for d in (0, 1) for g in groups]
    for record, (_, row) in zip(records, frame.iterrows(), strict=True):
        for d, entry in record.config["decoders"].items():
            for section in ("precision_cfg", "fidelity_cfg"):
                for group, value in entry[section].items():
                    assert row[f"d{int(d):02d}.{group}"] == value


def test_load_study_frame_matches_trials_frame(tiny_study):
    frame = load_study_frame("tiny", tiny_study.url)
    assert frame.drop(columns="cache_hit").equals(
        trials_frame(tiny_study.records, members=tiny_study.members).drop(columns="cache_hit")
    )
    assert frame["cache_hit"].map(type).eq(bool).all()
    with pytest.raises(TunelabError, match="no study 'nope'"):
        load_study_frame("nope", tiny_study.url)


def test_sensitivity_frame(tiny_study):
    frame = sensitivity_frame(tiny_study.runner.store.sensitivity(PROFILE))
    assert list(frame.columns) == ["layer", "tensor", "lowered", "kl_delta", "top1_delta", "tok_s_u_delta"]
    assert len(frame) == 6
    assert frame.set_index(["layer", "tensor"]).loc[(1, "FF2"), "kl_delta"] == pytest.approx(0.02)
    assert frame["top1_delta"].to_numpy() == pytest.approx([-0.02] * 6)
    assert frame["tok_s_u_delta"].to_numpy() == pytest.approx([1.0] * 6)
    assert sensitivity_frame([]).empty


def test_front_figure(tiny_study):
    records, members, spec = tiny_study.records, tiny_study.members, tiny_study.runner.spec
    fig = front_figure(records, members, spec)
    traces = {t.name: t for t in fig.data}
    assert len(traces["trials"].x) == sum(r.metrics.feasible for r in records)
    line = traces["front (search-time)"]
    assert len(line.x) == len(members) and line.mode == "lines+markers" and line.line.shape == "vh"
    assert list(line.x) == sorted(line.x)
    presets = traces["presets"]
    assert sorted(presets.text) == ["accuracy", "defaults", "performance"]
    assert len(traces["verified"].x) == 1
    assert traces["verified"].y[0] == pytest.approx(tiny_study.verified.metrics.top1 - 0.05)
    assert traces["search-time → verified"].line.dash == "dot"
    hover = " ".join(line.hovertext)
    assert "trial" in hover and "tok/s/user" in hover and "FF1_FF3=" in hover and "[" in hover
    title = fig.layout.title.text
    assert "tiny-llama" in title and "N150" in title and "2 windows" in title
    empty = front_figure([], [], spec)
    assert len(empty.data[1].x) == 0 and empty.layout.annotations[0].text == "no complete trials yet"


def test_precision_map_figure(tiny_study):
    members = tiny_study.members
    fig = precision_map_figure(members)
    searched = ["FF1_FF3", "FF2", "WQKV", "WO", "KV_CACHE"]
    assert [t.name for t in fig.data] == searched
    codes = {name: i for i, name in enumerate(FORMAT_COLOURS)}
    shown = sorted(members, key=lambda m: m.record.best.tok_s_u)
    for heatmap in fig.data:
        assert len(heatmap.z) == len(members) and list(heatmap.x) == [0, 1]
        for row, m in zip(heatmap.z, shown, strict=True):
            formats = [m.record.config["decoders"][str(d)]["precision_cfg"][heatmap.name] for d in (0, 1)]
            assert list(row) == [codes[f] for f in formats]
    assert "fidelity" in fig.data[0].text[0][0]
    assert list(fig.layout.coloraxis.colorbar.ticktext) == ["BFP4", "BFP8", "BF16"]
    assert fig.layout.annotations[0].text == "FF1_FF3"
    assert precision_map_figure([]).layout.annotations[0].text == "no front yet"


def test_sensitivity_and_hypervolume_figures(tiny_study):
    store = tiny_study.runner.store
    fig = sensitivity_figure(sensitivity_frame(store.sensitivity(PROFILE)))
    assert [t.name for t in fig.data] == ["BF16", "BFP4"]  # a panel per lowered format
    bfp4 = fig.data[1]
    assert list(bfp4.y) == ["FF1_FF3", "KV_CACHE"] and list(bfp4.x) == [0, 1]
    assert bfp4.z[0] == pytest.approx([0.01, 0.02])
    assert "top-1 -2.00 pp" in bfp4.text[0][0]
    rows = store.hypervolumes("tiny")
    hv = hypervolume_figure(rows)
    assert list(hv.data[0].x) == [t for t, _ in rows] and len(rows) >= TRIALS - 3
    assert list(hv.data[0].y) == sorted(hv.data[0].y)  # the front only ever grows


def test_write_study_plots(tiny_study, tmp_path):
    out = tmp_path / "plots"
    paths = write_study_plots(tiny_study.runner, out)
    assert [p.name for p in paths] == [
        "tiny-front.html",
        "tiny-precision-map.html",
        "tiny-hypervolume.html",
        "tiny-sensitivity.html",
    ]
    js = out / "plotly.min.js"
    assert js.stat().st_size > 1_000_000
    for p in paths:
        html = p.read_text()
        assert '<script charset="utf-8" src="plotly.min.js"></script>' in html and len(html) < 200_000
    inode = js.stat().st_ino
    write_study_plots(tiny_study.runner, out)
    assert js.stat().st_ino == inode  # written once, not again
    with pytest.raises(TunelabError) as info:
        write_study_plots(tiny_study.runner, tmp_path / "missing" / "plots")
    assert "\n" not in str(info.value) and "does not exist" in str(info.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(TunelabError, match="not a directory"):
        write_study_plots(tiny_study.runner, tmp_path / "file")


def test_write_study_plots_without_trials_or_profile(tiny_study, tmp_path):
    spec = dataclasses.replace(tiny_study.runner.spec, name="empty")
    create_study(spec, tiny_study.url)
    study, spec = load_spec("empty", tiny_study.url)
    runner = SimpleNamespace(study=study, spec=spec, store=tiny_study.runner.store)
    paths = write_study_plots(runner, tmp_path / "plots")
    assert [p.name for p in paths] == [
        "empty-front.html",
        "empty-precision-map.html",
        "empty-hypervolume.html",
    ]


def test_notebook_runs(tiny_study, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from ipykernel.kernelspec import install

    # A kernelspec of this interpreter in a temporary prefix, found first through JUPYTER_PATH.
    install(kernel_name="tunelab-test", prefix=str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    monkeypatch.setenv("TUNELAB_STUDY", "tiny")
    monkeypatch.setenv("TUNELAB_STORAGE", tiny_study.url)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(
        not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"
    )
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="tunelab-test", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"tiny: {TRIALS} complete trials" in text and "on the front" in text
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) == 4  # front, precision map, sensitivity, hypervolume


def _red_pixels(image, colour: str, box: tuple[int, int, int, int]) -> int:
    target = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    region = image.crop(box)
    return sum(
        count
        for count, pixel in region.getcolors(maxcolors=1 << 20)
        if all(abs(a - b) <= 6 for a, b in zip(pixel[:3], target, strict=True))
    )


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (.ci/run installs it)")
def test_front_page_renders_in_chromium(tiny_study, tmp_path):
    from PIL import Image

    out = tmp_path / "plots"
    page = write_study_plots(tiny_study.runner, out)[0]
    png = tmp_path / "front.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        f"--screenshot={png}",
        "--window-size=1200,800",
        "--virtual-time-budget=10000",
        page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert png.exists(), f"chromium wrote no screenshot: {result.stderr[-2000:]}"
    image = Image.open(png).convert("RGB")
    assert image.size == (1200, 800)
    plot_area = (100, 100, 1100, 560)  # inside the axes, below the title
    region = image.crop(plot_area)
    non_white = sum(count for count, pixel in region.getcolors(maxcolors=1 << 20) if min(pixel) < 235)
    assert non_white > 2000, "the plot area is (nearly) blank: plotly.js did not draw"
    # the front's markers and step line are drawn in their colour (one 11 px marker alone is ~90 pixels)
    assert _red_pixels(image, FRONT_COLOUR, plot_area) > 300
    shutil.rmtree(tmp_path / "chromium", ignore_errors=True)
    assert not math.isnan(tiny_study.members[0].values["top1"])
