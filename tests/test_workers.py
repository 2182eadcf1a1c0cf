"""Several workers on one study: real PostgreSQL (a throwaway cluster) and SQLite, real worker processes, a
worker killed with SIGKILL mid-trial, and database URLs that cannot be used."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import optuna
import pytest
import tiny_search
from cli_entry import assert_one_line_error, run_main
from optuna.trial import TrialState
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from tunelab.search.storage import EvaluationRow
from tunelab.search.study import StudyRunner, StudySpec, create_study, open_storage


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_search.setup(tmp_path_factory.mktemp("workers"))


def new_study(env, url, name="s"):
    _, settings, _, _ = env
    create_study(StudySpec(name=name, evaluation=settings, space={"granularity": "per-decoder"}), url)


def trial_states(url, name="s") -> Counter:
    study = optuna.load_study(study_name=name, storage=url)
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def evaluation_rows(url) -> tuple[int, int]:
    """(rows, distinct evaluation keys) in the evaluation cache."""
    engine = create_engine(url)
    key = (
        EvaluationRow.model_fingerprint,
        EvaluationRow.reference_key,
        EvaluationRow.config_key,
        EvaluationRow.evaluator_key,
    )
    with engine.connect() as connection:
        rows = connection.scalar(select(func.count()).select_from(EvaluationRow))
        distinct = len(connection.execute(select(*key).distinct()).all())
    engine.dispose()
    return rows, distinct


def run_workers_cli(monkeypatch, capsys, env, url, workers, trials):
    _, _, _, refs = env
    return run_main(
        monkeypatch,
        capsys,
        "study",
        "run",
        "s",
        "--storage",
        url,
        "--trials",
        trials,
        "--workers",
        workers,
        "--reference-dir",
        refs,
    )


def test_three_workers_on_postgresql_finish_exactly_60_trials_with_no_duplicate_evaluation(
    env, postgres_url, monkeypatch, capsys
):
    new_study(env, postgres_url)
    code, out, err = run_workers_cli(monkeypatch, capsys, env, postgres_url, 3, 60)
    assert code in (0, None), err
    assert trial_states(postgres_url) == {TrialState.COMPLETE: 60}
    rows, distinct = evaluation_rows(postgres_url)
    assert rows == distinct  # the unique key held under three concurrent writers
    study = optuna.load_study(study_name="s", storage=postgres_url)
    configs = {t.user_attrs["metrics"]["config_key"] for t in study.trials}
    assert rows == len(configs)  # every config scored exactly once
    assert len(configs) >= 50  # workers seed their samplers apart: few configs are proposed twice
    ran = {
        w: sum(int(line.split()[2]) for line in err.splitlines() if line.startswith(f"{w} ran "))
        for w in ("w1", "w2", "w3")
    }
    assert sum(ran.values()) == 60 and all(n > 0 for n in ran.values()), ran
    assert "front of s" in out


def test_several_sqlite_workers_lose_no_trial(env, tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    new_study(env, url)
    code, _, err = run_workers_cli(monkeypatch, capsys, env, url, 3, 30)
    assert code in (0, None), err
    assert "database is locked" not in err
    assert trial_states(url) == {TrialState.COMPLETE: 30}
    rows, distinct = evaluation_rows(url)
    assert rows == distinct


SLOW_SCORE = """
    import os
    import time

    import tunelab.evaluator as evaluator

    _score = evaluator.Evaluator.score


    def slow_score(self, precision):
        time.sleep(float(os.environ["TUNELAB_TEST_SLOW_SCORE"]))
        return _score(self, precision)


    evaluator.Evaluator.score = slow_score
"""


def test_a_worker_killed_mid_trial_has_its_trial_retried_and_nothing_lost(env, postgres_url, tmp_path):
    _, _, evaluator, refs = env
    new_study(env, postgres_url)
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(textwrap.dedent(SLOW_SCORE))
    command = ["worker", "s", "--storage", postgres_url, "--trials", "4", "--heartbeat", "1"]
    victim = subprocess.Popen(
        [sys.executable, "-m", "tunelab", *command, "--reference-dir", str(refs)],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "slow"), "TUNELAB_TEST_SLOW_SCORE": "600"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    study = optuna.load_study(study_name="s", storage=postgres_url)
    deadline = time.monotonic() + 180
    running = []
    while not running and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.params]
    assert running, victim.stderr.read().decode() if victim.poll() is not None else "no trial started"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = running[0]
    assert study.get_trials(states=(TrialState.RUNNING,))[0].number == killed.number  # nobody failed it

    survivor = StudyRunner("s", open_storage(postgres_url, heartbeat=1), evaluator=evaluator, poll=0.2)
    waits = []
    assert survivor.run(4, timeout=120, on_wait=waits.append) == 4
    states = trial_states(postgres_url)
    assert states == {TrialState.COMPLETE: 4, TrialState.FAIL: 1}
    trials = study.get_trials()
    assert trials[killed.number].state is TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state is TrialState.COMPLETE
    assert retried[0].params == killed.params and retried[0].user_attrs.get(
        "preset"
    ) == killed.user_attrs.get("preset")
    assert waits == [1]  # it waited once for the killed worker's trial, then retried it
    presets = [t.user_attrs.get("preset") for t in trials if t.state is TrialState.COMPLETE]
    assert sorted(p for p in presets if p) == ["accuracy", "defaults", "performance"]  # each warm start once
    rows, distinct = evaluation_rows(postgres_url)
    assert rows == distinct


def test_a_plain_postgresql_url_uses_the_installed_driver(env, postgres_url, monkeypatch, capsys):
    new_study(env, postgres_url)
    plain = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    code, out, err = run_main(monkeypatch, capsys, "study", "list", "--storage", plain, "--json")
    assert code in (0, None), err
    assert '"name": "s"' in out


def test_databases_that_cannot_be_used_are_one_line(postgres_url, tmp_path, monkeypatch, capsys):
    url = make_url(postgres_url)
    wrong_password = url.set(password="not-the-password").render_as_string(hide_password=False)
    closed_port = "postgresql://tunelab:secret-pw@127.0.0.1:9/tunelab"
    cases = [
        (wrong_password, "password authentication failed"),
        (closed_port, "127.0.0.1"),
        (url.set(database="no_such_db").render_as_string(hide_password=False), "no_such_db"),
        (f"sqlite:///{tmp_path}/missing/dir/studies.db", "no study database"),
        ("mysql://u:p@localhost/db", "mysql"),
        ("not a url", "not a url"),
    ]
    for storage, mention in cases:
        code, out, err = run_main(monkeypatch, capsys, "study", "list", "--storage", storage)
        line = assert_one_line_error(code, out, err, mention)
        assert "not-the-password" not in line and "secret-pw" not in line


def test_a_sqlite_study_moves_to_postgresql_with_one_command_and_continues_there(
    env, postgres_url, tmp_path, monkeypatch, capsys
):
    from cli_entry import snapshot

    _, _, evaluator, _ = env
    source = f"sqlite:///{tmp_path / 'studies.db'}"
    new_study(env, source)
    StudyRunner("s", source, evaluator=evaluator).run(4)
    before = snapshot(tmp_path / "studies.db")
    code, out, err = run_main(
        monkeypatch, capsys, "study", "copy", "s", "--storage", source, "--to", postgres_url
    )
    assert code in (0, None), err
    assert "copied study s (4 trials)" in out
    assert snapshot(tmp_path / "studies.db") == before
    assert_one_line_error(
        *run_main(monkeypatch, capsys, "study", "copy", "s", "--storage", source, "--to", postgres_url),
        "already exists",
    )

    copied = optuna.load_study(study_name="s", storage=postgres_url)
    original = optuna.load_study(study_name="s", storage=source)
    assert [(t.params, t.values, t.user_attrs) for t in copied.trials] == [
        (t.params, t.values, t.user_attrs) for t in original.trials
    ]
    assert evaluation_rows(postgres_url) == evaluation_rows(source)
    code, out, err = run_workers_cli(monkeypatch, capsys, env, postgres_url, 2, 8)
    assert code in (0, None), err
    assert trial_states(postgres_url) == {TrialState.COMPLETE: 8}
    assert trial_states(source) == {TrialState.COMPLETE: 4}


INTERRUPTIBLE = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with SIGINT ignored
os.execv(sys.executable, [sys.executable, "-m", "tunelab", *sys.argv[1:]])
"""


def test_ctrl_c_stops_every_local_worker_and_says_in_one_line_what_was_kept(env, tmp_path):
    _, _, _, refs = env
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    new_study(env, url)
    command = ["study", "run", "s", "--storage", url, "--trials", "100000", "--workers", "2"]
    run = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE, *command, "--reference-dir", str(refs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    study = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(1)
        with contextlib.suppress(KeyError):
            study = study or optuna.load_study(study_name="s", storage=url)
        if study is not None and len(study.get_trials(states=(TrialState.COMPLETE,))) >= 6:
            break
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=240)
    assert run.returncode == 130, err
    interrupted = [line for line in err.splitlines() if "interrupted" in line]
    assert len(interrupted) == 1 and interrupted[0] == err.splitlines()[-1], err[-2000:]
    states = trial_states(url)
    assert f"{states[TrialState.COMPLETE]} complete trials are kept" in interrupted[0]
    # Each worker marks its running trial failed as it exits; one interrupted inside Optuna's ask(), before the
    # objective starts, stays RUNNING until its heartbeat goes stale and the next run retries it.
    assert states[TrialState.RUNNING] <= 2
    assert "front of" not in out
