"""Sensitivity profiles, the additive model, the ladder and `tunelab sensitivity` on the tiny 2-layer model (the real
emulator against a real reference, real SQLite)."""

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import tiny_lm
from cli_entry import run_main
from optuna.trial import TrialState
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.evaluator import EvaluationSettings, Metrics, config_key, emulated_evaluator
from tunelab.interop import to_decoder_config
from tunelab.model_presets import model_preset
from tunelab.search.sensitivity import (
    PROFILE_ATTR,
    AdditiveModel,
    Profile,
    baseline_params,
    default_levels,
    enqueue_ladder,
    ladder,
    ladder_rungs,
    profile_key,
    rank_correlation,
    run_profile,
)
from tunelab.search.space import SearchSpace
from tunelab.search.storage import ResultStore
from tunelab.search.study import StudyRunner, StudySpec, TrialRecord, create_study, trial_records

LEVELS = 2  # per knob: BFP8 and BFP4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sensitivity")
    model_dir = tiny_lm.save(root / "tiny-llama")
    settings = EvaluationSettings(model=str(model_dir), windows=1, window_len=64, prefill_len=32)
    evaluator, _ = emulated_evaluator(settings, reference_dir=root / "refs")
    space = SearchSpace.build(model_preset("defaults", "tiny-llama", evaluator.model.n_layers), "per-decoder")
    base, levels = baseline_params(space), default_levels(space)
    key = profile_key(evaluator.key, config_key(space.decode(base)), levels)
    return SimpleNamespace(
        root=root, settings=settings, evaluator=evaluator, space=space, base=base, levels=levels, key=key
    )


def counting(evaluator):
    calls = []

    def score(precision):
        calls.append(config_key(precision))
        return evaluator.score(precision)

    return score, calls


@pytest.fixture(scope="module")
def profiled(tiny):
    store = ResultStore(f"sqlite:///{tiny.root / 'profile.db'}")
    score, calls = counting(tiny.evaluator)
    rows = run_profile(score, tiny.space, tiny.base, tiny.levels, store, tiny.key)
    return SimpleNamespace(store=store, rows=rows, calls=calls, profile=Profile.load(store, tiny.key))


def test_profile_has_one_row_per_decoder_knob_and_level(tiny, profiled):
    n_layers, knobs = len(tiny.space.groups), tiny.space.knobs
    assert tiny.levels == {
        "FF1_FF3": ["BFP8/HIFI2", "BFP4/LOFI"],
        "FF2": ["BFP8/HIFI2", "BFP4/LOFI"],
        "WQKV": ["BFP8/HIFI2", "BFP4/LOFI"],
        "WO": ["BFP8/HIFI2", "BFP4/LOFI"],
        "KV_CACHE": ["BFP8", "BFP4"],
    }
    assert set(tiny.base.values()) == {"BF16/HIFI4", "BF16"}
    assert len(profiled.rows) == len(profiled.profile.rows) == n_layers * len(knobs) * LEVELS == 20
    assert len(profiled.calls) == 20 + 1  # every row and the baseline, once
    assert {(r.layer, r.tensor, r.lowered) for r in profiled.rows} == {
        (layer, k.tensor.name, label)
        for layer in range(n_layers)
        for k in knobs
        for label in tiny.levels[k.tensor.name]
    }
    assert [r.layer for r in profiled.rows] == sorted(r.layer for r in profiled.rows)  # first decoder first
    worst = profiled.profile.most_sensitive(3)
    assert worst[0].kl_increase >= worst[1].kl_increase >= worst[2].kl_increase > 0
    layers, columns, values = profiled.profile.heatmap()
    assert layers == [0, 1] and len(columns) == 10 and not np.isnan(values).any()


def test_a_profile_resumes_and_skips_stored_rows(tiny, profiled, tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'resume.db'}")

    class Stop(Exception):
        pass

    def stop_after_7(done, total, row):
        if done == 7:
            raise Stop

    score, calls = counting(tiny.evaluator)
    with pytest.raises(Stop):
        run_profile(score, tiny.space, tiny.base, tiny.levels, store, tiny.key, stop_after_7)
    assert len(calls) == 1 + 7 and len(store.sensitivity(tiny.key)) == 7
    score, calls = counting(tiny.evaluator)
    rows = run_profile(score, tiny.space, tiny.base, tiny.levels, store, tiny.key)
    assert len(calls) == 20 - 7  # the baseline comes from the stored rows
    assert len(rows) == 20
    score, calls = counting(tiny.evaluator)
    assert len(run_profile(score, tiny.space, tiny.base, tiny.levels, store, tiny.key)) == 20 and calls == []
    measured = {(r.layer, r.tensor, r.lowered): (r.metrics.kl, r.metrics.top1) for r in profiled.rows}
    assert {(r.layer, r.tensor, r.lowered): (r.metrics.kl, r.metrics.top1) for r in rows} == measured


def test_lowering_a_group_never_changes_the_baseline_row(tiny, profiled):
    baseline = tiny.space.decode(tiny.base)
    again = tiny.evaluator.score(baseline)
    for row in profiled.rows:
        assert row.baseline == profiled.rows[0].baseline
        assert (row.baseline.config_key, row.baseline.kl, row.baseline.top1) == (
            again.config_key,
            again.kl,
            again.top1,
        )
        knob = next(k for k in tiny.space.knobs if k.tensor.name == row.tensor)
        lowered = tiny.space.decode({**tiny.base, tiny.space.param_name(row.layer, knob): row.lowered})
        assert row.metrics.config_key == config_key(lowered) != again.config_key
        changed = [i for i in range(baseline.n_layers) if lowered[i] != baseline[i]]
        assert changed == [row.layer]
        fields = {
            g
            for g in lowered[row.layer].precisions
            if lowered[row.layer].precision(g) != baseline[row.layer].precision(g)
        }
        assert {g.name for g in fields} == {row.tensor}


def test_the_additive_model_reproduces_every_single_change(tiny, profiled):
    model = AdditiveModel.from_rows(profiled.rows, tiny.space)
    assert model.predict(tiny.base) == (0.0, 0.0)
    for row in profiled.rows:
        knob = next(k for k in tiny.space.knobs if k.tensor.name == row.tensor)
        params = {**tiny.base, tiny.space.param_name(row.layer, knob): row.lowered}
        assert model.predict(params) == (row.kl_increase, row.top1_drop)
        assert model.predict_config(tiny.space.decode(params)) == (row.kl_increase, row.top1_drop)
    a, b = profiled.rows[0], profiled.rows[-1]
    both = {**tiny.base, f"g{a.layer}.{a.tensor}": a.lowered, f"g{b.layer}.{b.tensor}": b.lowered}
    assert model.predict(both)[0] == pytest.approx(a.kl_increase + b.kl_increase)
    # an unprofiled choice counts as its format's profiled level, one in the baseline's format as no change
    assert model.predict({**tiny.base, "g0.FF2": "BFP8/LOFI"}) == model.predict(
        {**tiny.base, "g0.FF2": "BFP8/HIFI2"}
    )
    assert model.predict({**tiny.base, "g0.FF2": "BF16/LOFI"}) == (0.0, 0.0)


def test_the_ladder_is_ordered_distinct_within_budget_and_optimal(tiny, profiled):
    model = AdditiveModel.from_rows(profiled.rows, tiny.space)

    def speed(precision):
        return tiny.evaluator.speed(precision).tok_s_u

    rungs = ladder_rungs(model, tiny.space, speed, 6)
    assert [r.precision for r in rungs] == ladder(model, tiny.space, speed, 6)
    assert 2 <= len(rungs) <= 6
    keys = [config_key(r.precision) for r in rungs]
    assert len(set(keys)) == len(keys)
    assert [r.tok_s_u for r in rungs] == sorted(r.tok_s_u for r in rungs)
    for r in rungs:
        assert r.tok_s_u >= r.budget * (1 - 1e-12)
        assert r.precision == tiny.space.decode(r.params)
        assert r.kl_increase == pytest.approx(model.predict(r.params)[0], abs=1e-12)
    assert [r.kl_increase for r in rungs] == sorted(r.kl_increase for r in rungs)
    assert rungs[0].precision == tiny.space.decode(tiny.base) or rungs[0].kl_increase < 0

    # brute force over all 3^10 per-decoder choices: the least predicted KL within each rung's budget
    t0 = 1 / speed(tiny.space.decode(tiny.base))
    options = []
    for name, base_label in tiny.base.items():
        tensor = name.split(".")[1]
        layer = int(name[1 : name.index(".")])
        labels = [base_label, *tiny.levels[tensor]]
        dt = [1 / speed(tiny.space.decode({**tiny.base, name: label})) - t0 for label in labels]
        kl = [0.0] + [model.kl[(layer, tensor, label)] for label in labels[1:]]
        options.append((dt, kl))
    combos = np.array(list(itertools.product(range(3), repeat=len(options))))
    time = t0 + sum(np.array(dt)[combos[:, i]] for i, (dt, _) in enumerate(options))
    kl = sum(np.array(k)[combos[:, i]] for i, (_, k) in enumerate(options))
    for r in rungs:
        best = kl[time <= 1 / r.budget * (1 + 1e-12)].min()
        assert r.kl_increase == pytest.approx(best, abs=1e-9)


@pytest.fixture
def study(tiny, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = StudySpec(
        name="tiny", evaluation=tiny.settings, space={"granularity": "blocks:2"}, sampler="random"
    )
    create_study(spec, url)
    return StudyRunner("tiny", url, evaluator=tiny.evaluator)


def test_the_ladder_is_enqueued_and_run_first(tiny, profiled, study):
    model = AdditiveModel.from_rows(profiled.rows, tiny.space)
    configs = ladder(model, tiny.space, lambda p: tiny.evaluator.speed(p).tok_s_u, 5)
    assert enqueue_ladder(study, configs, tag=tiny.key) == len(configs)
    assert enqueue_ladder(study, configs, tag=tiny.key) == 0  # already waiting
    assert study.run(len(configs)) == len(configs)
    trials = study.study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.user_attrs["metrics"]["config_key"] for t in trials] == [config_key(c) for c in configs]
    assert [t.user_attrs["ladder"] for t in trials] == list(range(len(configs)))
    assert enqueue_ladder(study, configs) == 0  # already complete
    study.run(len(configs) + 3)  # the warm starts follow
    records = trial_records(study.study, study.store)
    rho = rank_correlation(model, records)
    assert len(records) == len(configs) + 3 and -1.0 <= rho <= 1.0


def test_rank_correlation_is_one_for_a_monotone_measurement(tiny, profiled):
    model = AdditiveModel.from_rows(profiled.rows, tiny.space)
    rungs = ladder_rungs(model, tiny.space, lambda p: tiny.evaluator.speed(p).tok_s_u, 6)
    assert len({r.kl_increase for r in rungs}) >= 3
    records = [
        TrialRecord(
            number=i,
            params={},
            metrics=Metrics(config_key(r.precision), kl=math.exp(5 * r.kl_increase) + 0.25),
            config=to_decoder_config(r.precision),
            preset=None,
            description="",
        )
        for i, r in enumerate(rungs)
    ]
    assert rank_correlation(model, records) == pytest.approx(1.0)
    assert rank_correlation(model, records[::-1]) == pytest.approx(1.0)
    assert math.isnan(rank_correlation(model, records[:1]))


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'none.db'}"
    code, out, err = run_main(monkeypatch, capsys, "sensitivity", "--study", "nope", "--storage", url)
    assert (code, out) == (2, "") and err.startswith("error: no study database") and err.count("\n") == 1
    assert not (tmp_path / "none.db").exists()  # a mistyped path leaves no empty database behind
    code, out, err = run_main(monkeypatch, capsys, "sensitivity", "--study", "a", "--model", "b")
    assert (code, out, err) == (2, "", "error: give --study NAME or --model MODEL, not both\n")


def test_cli_profiles_a_study_and_enqueues_a_ladder(tiny, tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    spec = StudySpec(
        name="cli", evaluation=tiny.settings, space={"granularity": "per-decoder"}, sampler="random"
    )
    create_study(spec, url)
    args = ["sensitivity", "--study", "cli", "--storage", url, "--reference-dir", tiny.root / "refs"]
    result = CliRunner().invoke(app, [str(a) for a in [*args, "--ladder", "4"]])
    assert result.exit_code == 0, result.output
    assert "20 rows (20 new)" in result.stdout and "most sensitive" in result.stdout
    runner = StudyRunner("cli", url, evaluator=tiny.evaluator)
    key = runner.study.user_attrs[PROFILE_ATTR]
    assert key == tiny.key  # the study's settings with one window: the same evaluator, baseline and levels
    waiting = runner.study.get_trials(states=(TrialState.WAITING,))
    assert 2 <= len(waiting) <= 4 and all("ladder" in t.user_attrs for t in waiting)
    runner.run(len(waiting))
    again = CliRunner().invoke(app, [str(a) for a in [*args, "--ladder", "4"]])
    assert again.exit_code == 0, again.output
    assert "20 rows (0 new)" in again.stdout and " 0 enqueued" in again.stdout
    assert "additive prediction vs measured KL on the front" in again.stdout
    shown = CliRunner().invoke(app, [str(a) for a in [*args, "--json", "--top", "3"]])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert (data["profile"], data["rows"], data["new_rows"], len(data["most_sensitive"])) == (key, 20, 0, 3)
    assert data["front_size"] >= 1 and len(data["means"]) == 10
