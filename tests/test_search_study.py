"""Studies on a tiny random Llama with real SQLite: warm starts, cache, resume, constraints, front, export, CLI."""

import itertools
import json
import time

import optuna
import pytest
import tiny_search
from cli_entry import run_main
from optuna.trial import TrialState
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import ConfigError, TunelabError
from tunelab.interop import read_decoder_config, write_decoder_config
from tunelab.model_presets import model_preset
from tunelab.presets import hard_defaults
from tunelab.search.export import choose, export_trial
from tunelab.search.pareto import hypervolume, nondominated
from tunelab.search.samplers import SAMPLERS, AdditiveSampler, _AdditiveTable, _Encoder
from tunelab.search.storage import ResultStore
from tunelab.search.study import StudyRunner, StudySpec, create_study, front, load_spec, trial_records


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_search.setup(tmp_path_factory.mktemp("study"))


def new_study(env, tmp_path, name="s", **spec):
    _, settings, evaluator, _ = env
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    create_study(StudySpec(name=name, evaluation=settings, space={"granularity": "per-decoder"}, **spec), url)
    return StudyRunner(name, url, evaluator=evaluator), url


def test_warm_starts_run_first_with_their_exact_configs(env, tmp_path):
    runner, _ = new_study(env, tmp_path)
    assert runner.run(6) == 6
    records = trial_records(runner.study, runner.store)
    assert [r.preset for r in records[:3]] == ["defaults", "performance", "accuracy"]
    for r in records[:3]:
        assert r.metrics.config_key == tiny_search_key(r.preset)
    assert all(r.preset is None for r in records[3:])
    t = runner.study.trials[0]
    assert {"metrics", "config", "description", "cache_hit"} <= set(t.user_attrs)
    assert t.constraints == {"fits": 0.0}


def tiny_search_key(preset):
    from tunelab.evaluator import config_key

    return config_key(model_preset(preset, "tiny-llama", 2))


def test_front_is_non_dominated_and_hypervolume_is_recorded_per_trial(env, tmp_path):
    runner, _ = new_study(env, tmp_path)
    runner.run(10)
    records = trial_records(runner.study, runner.store)
    members = front(records, runner.spec)
    points = [[r.metrics.top1, r.metrics.tok_s_u] for r in records]
    expected = {records[i].number for i in nondominated(points, [True, True])}
    assert {m.record.number for m in members} == expected
    stored = runner.store.front("s")
    assert [m["trial"] for m in stored] == sorted(m.record.number for m in members)
    volumes = runner.store.hypervolumes("s")
    assert [t for t, _ in volumes] == list(range(2, 10))  # from when the three warm starts are in
    assert all(b >= a for (_, a), (_, b) in itertools.pairwise(volumes))


def test_resume_runs_only_what_is_missing_and_retries_an_interrupted_warm_start(env, tmp_path):
    runner, url = new_study(env, tmp_path)
    original = runner._score_trial
    calls = []

    def interrupt_second(trial, *suggested):
        calls.append(trial.number)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(trial, *suggested)

    runner._score_trial = interrupt_second
    with pytest.raises(KeyboardInterrupt):
        runner.run(5)
    assert runner.study.trials[1].state is TrialState.FAIL
    again = StudyRunner("s", url, evaluator=env[2])
    assert again.run(5) == 4
    records = trial_records(again.study, again.store)
    assert len(records) == 5
    assert [r.preset for r in records[:3]] == ["defaults", "accuracy", "performance"]  # re-enqueued
    assert again.run(5) == 0


def test_cache_serves_other_studies_and_a_hit_is_fast(env, tmp_path):
    first, url = new_study(env, tmp_path, "a")
    first.run(4)
    store = ResultStore(url)
    rows = store.evaluation_count()
    second = StudyRunner("a", url, evaluator=env[2])
    create_study(StudySpec(name="b", evaluation=env[1], space={"granularity": "per-decoder"}), url)
    second = StudyRunner("b", url, evaluator=env[2])
    second.run(3)  # the three presets again
    assert [t.user_attrs["cache_hit"] for t in second.study.trials] == [True, True, True]
    assert store.evaluation_count() == rows
    start = time.perf_counter()
    metrics, hit = second.score(model_preset("performance", "tiny-llama", 2))
    assert hit and time.perf_counter() - start < 0.05
    store.remember("x", "y", metrics)
    store.remember("x", "y", metrics)  # insert-or-ignore: the unique key holds
    assert store.evaluation_count() == rows + 1


def test_constraints_exclude_infeasible_trials_from_the_front(env, tmp_path):
    runner, _ = new_study(env, tmp_path, min_top1=0.95)
    runner.run(8)
    records = trial_records(runner.study, runner.store)
    feasible = [r for r in records if r.metrics.top1 >= 0.95]
    assert 0 < len(feasible) < len(records)
    assert {m.record.number for m in front(records, runner.spec)} <= {r.number for r in feasible}
    low = next(r for r in records if r.metrics.top1 < 0.95)
    assert runner.study.trials[low.number].constraints["min_top1"] > 0


def test_export_writes_a_valid_complete_config(env, tmp_path):
    runner, _ = new_study(env, tmp_path)
    runner.run(6)
    records = trial_records(runner.study, runner.store)
    members = front(records, runner.spec)
    fastest = choose(records, members, fastest=True)
    assert fastest.metrics.tok_s_u == max(m.record.metrics.tok_s_u for m in members)
    result = export_trial(fastest, tmp_path / "best.json", "org/tiny", "N150", 2)
    parsed = read_decoder_config(result.path, lambda _n: hard_defaults())
    assert parsed.findings(2) == [] or all(f.level == "note" for f in parsed.findings(2))
    assert json.loads(result.path.read_text()) == fastest.config
    assert "--decoder_config_file" in result.command and "MESH_DEVICE=N150" in result.command
    preset = choose(records, members, trial=1)
    assert export_trial(preset, tmp_path / "p.json", "org/tiny", "N150", 2).optimizations.startswith(
        "precision_cfg = {"
    )
    perf = next(r for r in records if r.preset == "performance").metrics
    as_fast = choose(records, members, as_fast_as="performance", tolerance=0.0)
    assert as_fast.metrics.tok_s_u >= perf.tok_s_u
    assert as_fast.metrics.top1 == max(
        m.record.metrics.top1 for m in members if m.record.metrics.tok_s_u >= perf.tok_s_u
    )
    loose = choose(records, members, as_fast_as="performance", tolerance=0.5)
    assert loose.metrics.top1 == max(m.record.metrics.top1 for m in members)
    with pytest.raises(TunelabError, match="no trial of the 'bf16' warm start"):
        choose(records, members, as_fast_as="bf16")
    best_top1 = max(m.record.metrics.top1 for m in members)
    assert choose(records, members, min_top1=best_top1).metrics.top1 == best_top1
    with pytest.raises(TunelabError, match="no front member reaches"):
        choose(records, members, min_top1=1.01)
    with pytest.raises(ConfigError, match="exactly one of"):
        choose(records, members, trial=1, fastest=True)
    with pytest.raises(TunelabError, match="is a directory"):
        export_trial(fastest, tmp_path, "org/tiny", "N150", 2)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs(env, tmp_path, sampler):
    runner, _ = new_study(env, tmp_path, sampler=sampler, seeds=())
    assert runner.run(11) == 11
    assert len({r.metrics.config_key for r in trial_records(runner.study)}) >= 8


def test_additive_table_is_exact_for_the_modelled_speed(env):
    evaluator = env[2]
    from tunelab.search.space import SearchSpace

    space = SearchSpace.build(model_preset("defaults", "tiny-llama", 2), "per-decoder")
    encoder = _Encoder(space.params)
    import numpy as np

    table = _AdditiveTable(
        lambda p: evaluator.speed(space.decode(p)).tok_s_u, encoder, np.random.default_rng(0)
    )
    assert table.exact
    rng = np.random.default_rng(1)
    for _ in range(5):
        params = {n: c[rng.integers(len(c))] for n, c in space.params.items()}
        assert table(params) == pytest.approx(evaluator.speed(space.decode(params)).tok_s_u, rel=1e-9)
    sampler = AdditiveSampler(space.params, {1: lambda p: 0.0}, seed=0)
    assert sampler.encoder.size == encoder.size


def test_hypervolume_2d_and_3d():
    points = [[0.9, 120.0], [0.8, 125.0], [0.7, 121.0]]
    ref = [0.6, 110.0]
    # (0.9-0.6)*(120-110) + (0.8-0.6)*(125-120); the third point is dominated
    assert hypervolume(points, [True, True], ref) == pytest.approx(3.0 + 1.0)
    assert hypervolume([[0.5, 100.0]], [True, True], ref) == 0.0
    cube = hypervolume([[1.0, 1.0, 1.0]], [False, False, False], [2.0, 3.0, 4.0])
    assert cube == pytest.approx(1 * 2 * 3)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_create_run_front_export_show_list_delete(env, tmp_path, monkeypatch):
    model_dir, _, _, refs = env
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    common = ["--storage", url]
    created = invoke(
        "study", "create", "t", "--model", model_dir, "--mesh-device", "N150", "--space", "per-decoder",
        "--window-len", 64, "--prefill", 32, *common,
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    run = invoke("study", "run", "t", "--trials", 5, "--reference-dir", refs, *common)
    assert run.exit_code == 0, run.output
    assert "front of t" in run.output
    listed = json.loads(invoke("study", "list", "--json", *common).output)
    assert listed[0]["name"] == "t" and listed[0]["trials"] == 5
    front_rows = json.loads(invoke("study", "front", "t", "--json", *common).output)
    assert front_rows and {"trial", "top1", "tok_s_u", "verified", "preset"} <= set(front_rows[0])
    assert all(r["verified"] is False for r in front_rows)
    csv_out = invoke("study", "front", "t", "--csv", *common).output
    assert csv_out.splitlines()[0].startswith("trial,top1")
    exported = invoke("study", "export", "t", "--fastest", "-o", tmp_path / "x.json", *common)
    assert exported.exit_code == 0 and "run it from the tt-metal root" in exported.output
    write_decoder_config(model_preset("bf16", "tiny-llama", 2), tmp_path / "seed.json")
    shown = invoke("study", "show", "t", *common)
    assert shown.exit_code == 0 and "trials: complete 5" in shown.output
    deleted = invoke("study", "delete", "t", "--yes", *common)
    assert deleted.exit_code == 0
    assert optuna.get_all_study_summaries(url) == []


def test_cli_errors_are_one_line(env, tmp_path, monkeypatch, capsys):
    model_dir = env[0]
    url = f"sqlite:///{tmp_path / 'e.db'}"
    code, _, err = run_main(monkeypatch, capsys, "study", "show", "nope", "--storage", url)
    assert code == 2 and err.startswith("error: no study database") and err.count("\n") == 1
    args = ["study", "create", "u", "--model", model_dir, "--mesh-device", "N150", "--storage", url]
    args += ["--space", "per-decoder", "--window-len", "64", "--prefill", "32"]
    assert run_main(monkeypatch, capsys, *args)[0] == 0
    code, _, err = run_main(monkeypatch, capsys, "study", "show", "nope", "--storage", url)
    assert code == 2 and err.startswith("error: no study 'nope'") and err.count("\n") == 1
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    for extra, message in [
        (["--sampler", "bogus"], "unknown --sampler 'bogus'"),
        (["--space", "blocks:x"], "unknown granularity"),
        (["--space", "blocks:3"], "blocks:3 needs 1..2 blocks for 2 decoders"),
        (["--objectives", "top1,speed"], "unknown objective 'speed'"),
        (["--seeds", "fastest"], "unknown preset 'fastest'"),
        (["--min-top1", "90"], "--min-top1 is a fraction"),
    ]:
        code, _, err = run_main(
            monkeypatch, capsys, "study", "create", f"v{len(extra[1])}", *args[3:], *extra
        )
        assert code == 2 and message in err and err.count("\n") == 1, err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, _, err = run_main(monkeypatch, capsys, *args[:2], "w", *args[3:], "--seed-config", bad)
    assert code == 2 and "malformed JSON" in err
    code, _, err = run_main(
        monkeypatch, capsys, "study", "list", "--storage", "postgresql://u:secret@127.0.0.1:1/db"
    )
    assert code == 2 and "secret" not in err and err.count("\n") == 1


def test_spec_round_trips_through_the_study(env, tmp_path):
    runner, url = new_study(env, tmp_path, sampler="random", min_top1=0.5, max_dram_gb=10.0, seed=3)
    _, spec = load_spec("s", url)
    assert spec == runner.spec and spec.min_top1 == 0.5 and spec.seed == 3


def test_verify_rescores_the_front_and_the_front_then_uses_verified_metrics(env, tmp_path):
    from dataclasses import replace

    from tunelab.evaluator import emulated_evaluator
    from tunelab.search.verify import outside_interval, verify_front

    runner, _ = new_study(env, tmp_path)
    runner.run(6)
    _, settings, _, refs = env
    careful, _ = emulated_evaluator(replace(settings, windows=None, accumulation="exact"), reference_dir=refs)
    search_front = {m.record.number for m in front(trial_records(runner.study), runner.spec)}
    results = verify_front(runner, careful)
    assert results and all(v.metrics.n_windows == careful.n_windows > 2 for v in results)
    assert {v.record.number for v in results} == search_front
    stored = runner.store.verifications("s")
    assert set(stored) == {v.record.number for v in results}
    records = trial_records(runner.study, runner.store)
    verified = [r for r in records if r.verified is not None]
    assert verified and all(r.best is r.verified for r in verified)
    assert all(m.verified for m in front(records, runner.spec) if m.record.number in stored)
    for v in results:
        assert v.flagged == outside_interval(v.record.metrics, v.metrics)
    rows = json.loads(
        CliRunner().invoke(app, ["study", "front", "s", "--json", "--storage", runner.storage]).output
    )
    assert any(r["verified"] for r in rows)


def test_outside_interval():
    from tunelab.evaluator import Metrics
    from tunelab.search.verify import outside_interval

    search = Metrics("k", top1=0.8, top1_ci=(0.78, 0.82))
    assert not outside_interval(search, Metrics("k", top1=0.81))
    assert outside_interval(search, Metrics("k", top1=0.77))
    assert outside_interval(search, Metrics("k", top1=0.83))


def test_dominated_choices_are_pruned_against_the_throughput_objectives(env, tmp_path):
    runner, _ = new_study(env, tmp_path)
    for labels in runner.space.params.values():
        # Decode speed does not see fidelity on an N150: each format keeps only its most precise fidelity.
        assert labels in (("BFP4/HIFI4", "BFP8/HIFI4", "BF16/HIFI4"), ("BFP4", "BFP8", "BF16"))
    exact, _ = new_study(env, tmp_path, name="exact")
    exact.spec = StudySpec(
        name="exact", evaluation=env[1], space={"granularity": "per-decoder", "prune": "exact"}
    )
    assert len(exact.space.params["g0.FF1_FF3"]) == 11


def test_without_dominated_keeps_what_is_cheaper_on_some_cost():
    from tunelab.search.space import SearchSpace

    space = SearchSpace.build(model_preset("defaults", "tiny-llama", 2), "uniform")

    def costs(params):  # time grows with phases (a prefill-bound cost), bytes with the format
        time = sum(space.knobs[i].parse(params[n])[1].kernel.phases for i, n in enumerate(params) if i < 4)
        size = sum({"BFP4": 1, "BFP8": 2, "BF16": 4}[params[n].split("/")[0]] for n in params)
        return [time, size]

    labels = space.without_dominated(costs).params["g0.FF2"]
    assert "BFP8/LOFI" in labels and "BFP8/HIFI4" in labels  # cheaper vs more precise: both stay
    assert "BFP8/HIFI2_FP16" not in labels  # HIFI2 costs the same and has an fp32 Dst
    assert "BFP4/HIFI2" in labels and "BF16/LOFI" in labels


def test_config_code_compresses_runs_of_decoders():
    from tunelab.interop import to_decoder_config
    from tunelab.precision import ModelPrecision, Precision, TensorGroup
    from tunelab.search.export import config_code

    low = hard_defaults().overlay({TensorGroup.FF1_FF3: Precision.BFP4, TensorGroup.KV_CACHE: Precision.BF16})
    config = ModelPrecision((low, low, hard_defaults(), low))
    assert config_code(to_decoder_config(config)) == "0-1:4888h 2:88888 3:4888h"
