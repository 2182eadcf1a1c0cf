"""Load: K worker processes sharing one study, on PostgreSQL and on SQLite, side by side.

    python benchmarks/load.py [--workers 3] [--trials 60] [--smollm2-windows 2] [--no-smollm2]

Each worker is a process running a real `StudyRunner` with the emulator on a tiny random Llama (2 decoders, the
one the tests use), the random sampler (so the figures are storage and bookkeeping, not sampling), and one thread.
Printed per storage, for one worker and for K: trials per minute, and per trial the evaluation time beside the
time spent outside the evaluator (storage reads and writes, the study lock, the front and hypervolume refresh),
excluding the wait for other workers' last trials, and how much of that was queueing for the study lock. With K
workers on a model this small the lock, held while a trial starts, is busy most of the time: queueing that trials
of seconds do not see, so the storage overhead set against a SmolLM2 trial leaves it out. The storage overhead is then set against one SmolLM2 2-window trial (the demo's),
timed here. PostgreSQL is $TUNELAB_TEST_POSTGRES or a throwaway cluster started with scripts/postgres.sh.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny model (tiny_lm) and its search set-up

for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(variable, "1")


def worker(number: int, name: str, url: str, trials: int, refs: str, settings, barrier, results) -> None:
    from tunelab.evaluator import emulated_evaluator
    from tunelab.search.study import StudyRunner

    evaluator, _ = emulated_evaluator(settings, reference_dir=refs)
    runner = StudyRunner(name, url, evaluator=evaluator, poll=0.05, worker=number)
    runner.lock = TimedLock(runner.lock)
    barrier.wait()
    ran = runner.run(trials)
    results.put(
        (
            ran,
            runner.run_seconds,
            runner.evaluation_seconds,
            runner.wait_seconds,
            time.perf_counter(),
            runner.lock.waited,
        )
    )


class TimedLock:
    """The study lock, counting the seconds spent waiting to acquire it (queueing behind other workers)."""

    def __init__(self, lock) -> None:
        self.lock, self.waited = lock, 0.0

    def __enter__(self) -> None:
        start = time.perf_counter()
        self.lock.__enter__()
        self.waited += time.perf_counter() - start

    def __exit__(self, *exc) -> None:
        self.lock.__exit__(*exc)


def measure(label: str, url: str, workers: int, trials: int, settings, refs: Path) -> dict[str, float]:
    from tunelab.search.storage import EvaluationRow
    from tunelab.search.study import StudySpec, create_study

    create_study(
        StudySpec(name="load", evaluation=settings, space={"granularity": "per-decoder"}, sampler="random"),
        url,
    )
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers + 1), context.Queue()
    processes = [
        context.Process(target=worker, args=(i, "load", url, trials, str(refs), settings, barrier, results))
        for i in range(workers)
    ]
    for p in processes:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    stats = [results.get() for _ in processes]
    for p in processes:
        p.join()
    wall = max(s[4] for s in stats) - start
    ran = sum(s[0] for s in stats)
    evaluation = sum(s[2] for s in stats)
    outside = sum(s[1] - s[2] - s[3] for s in stats)
    queued = sum(s[5] for s in stats)
    import optuna

    study = optuna.load_study(study_name="load", storage=url)
    complete = sum(t.state.name == "COMPLETE" for t in study.trials)
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.scalar(select(func.count()).select_from(EvaluationRow))
    engine.dispose()
    configs = len({t.user_attrs["metrics"]["config_key"] for t in study.trials if t.state.name == "COMPLETE"})
    print(
        f"{label:10s} {workers} workers x {trials} trials: {complete} complete ({ran} run), "
        f"{rows} cache rows for {configs} configs, {60 * ran / wall:6.1f} trials/min; per trial "
        f"{1000 * evaluation / ran:6.1f} ms evaluating, {1000 * outside / ran:6.1f} ms outside the evaluator "
        f"({1000 * queued / ran:.1f} ms of it queueing for the study lock)"
    )
    return {"overhead_s": (outside - queued) / ran, "complete": complete, "rows": rows, "configs": configs}


def smollm2_trial_seconds(windows: int) -> float:
    """A SmolLM2 trial at the demo's settings: the median time to score tt-transformers' three presets (each new
    to the evaluator) on `windows` windows, one after the other as a study's first trials are."""
    from tunelab.evaluator import EvaluationSettings, emulated_evaluator
    from tunelab.model_presets import model_preset

    evaluator, loaded = emulated_evaluator(EvaluationSettings(windows=windows))
    times = []
    for preset in ("defaults", "performance", "accuracy"):
        start = time.perf_counter()
        evaluator.score(model_preset(preset, loaded.config.name, loaded.config.n_layers))
        times.append(time.perf_counter() - start)
    return sorted(times)[1]


def postgres_url(directory: str) -> str:
    url = os.environ.get("TUNELAB_TEST_POSTGRES")
    if url:
        return url
    started = subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh"), "start", directory], capture_output=True, text=True
    )
    if started.returncode != 0:
        sys.exit(f"cannot start PostgreSQL: {started.stderr.strip()}")
    return started.stdout.strip()


def fresh_database(server: str, name: str) -> str:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--smollm2-windows", type=int, default=2)
    parser.add_argument("--no-smollm2", action="store_true", help="Skip timing the SmolLM2 trial.")
    args = parser.parse_args()

    import tiny_search

    from tunelab.evaluator import emulated_evaluator

    with tempfile.TemporaryDirectory(prefix="tunelab-load-") as tmp:
        _, settings, _, refs = tiny_search.setup(Path(tmp))
        emulated_evaluator(settings, reference_dir=refs)  # the reference exists before the workers start
        pg_dir = str(Path(tmp) / "pg")
        server = postgres_url(pg_dir)
        try:
            results = {}
            for workers in sorted({1, args.workers}):
                for storage in ("postgresql", "sqlite"):
                    name = f"load_{workers}"
                    if storage == "postgresql":
                        url = fresh_database(server, name)
                    else:
                        url = f"sqlite:///{tmp}/{name}.db"
                    results[storage, workers] = measure(storage, url, workers, args.trials, settings, refs)
        finally:
            if "TUNELAB_TEST_POSTGRES" not in os.environ:
                subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "stop", pg_dir], check=False)
    for workers in sorted({1, args.workers}):
        ratio = results["sqlite", workers]["overhead_s"] / results["postgresql", workers]["overhead_s"]
        print(f"{workers} worker(s): sqlite / postgresql time outside the evaluator per trial: {ratio:.2f}x")
    if not args.no_smollm2:
        trial = smollm2_trial_seconds(args.smollm2_windows)
        print(f"SmolLM2 {args.smollm2_windows}-window trial: {trial:.2f} s (median of the three presets)")
        for workers in sorted({1, args.workers}):
            overhead = results["postgresql", workers]["overhead_s"]
            print(
                f"PostgreSQL, {workers} worker(s): {1000 * overhead:.1f} ms per trial outside the evaluator and "
                f"the lock queue = {100 * overhead / trial:.2f}% of a SmolLM2 trial (target <= 2%)"
            )


if __name__ == "__main__":
    main()
