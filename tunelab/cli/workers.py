"""`tunelab worker NAME`: one worker of a study (start one per machine or device), and `study run --workers N`'s
local worker processes."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.study import (
    HeartbeatOpt,
    NameArg,
    RefDirOpt,
    StorageOpt,
    TimeoutOpt,
    TrialsOpt,
    _check_run_options,
    _evaluator_factory,
    _run_here,
    _safe_url,
    _storage,
    err,
)
from tunelab.errors import TunelabError

__all__ = ["run_workers", "worker_command"]

STOP_GRACE = 60  # seconds interrupted workers get to mark their running trials failed before they are killed


def worker_command(
    name: NameArg,
    trials: TrialsOpt = 60,
    timeout: TimeoutOpt = None,
    storage: StorageOpt = None,
    reference_dir: RefDirOpt = None,
    heartbeat: HeartbeatOpt = 15.0,
    label: Annotated[str, typer.Option(help="This worker's name in its output.")] = "",
    worker: Annotated[
        int | None,
        typer.Option(
            help="This worker's number, offsetting the sampler's seed so workers propose different configs "
            "(default: drawn at random; `study run --workers N` numbers its workers 0..N-1)."
        ),
    ] = None,
) -> None:
    """Run trials of an existing study alongside other workers (on this or other machines) until the study has
    `--trials` complete trials. Workers share the study through its database (PostgreSQL across machines)."""
    from tunelab.search.study import StudyRunner

    _check_run_options(trials, timeout, heartbeat)
    url = _storage(name, storage)
    number = secrets.randbelow(2**31) if worker is None else worker
    factory = _evaluator_factory(reference_dir)
    runner = StudyRunner(name, url, evaluator_factory=factory, heartbeat=heartbeat, worker=number)
    _run_here(runner, name, url, trials, timeout, label=label or f"worker {os.getpid()}")


def run_workers(name: str, url: str, n: int, options: list[str]) -> None:
    """Run `n` local `tunelab worker` processes on one study, each with cores/n threads, relaying their output
    line by line. Ctrl-C stops them all (each marks its running trial failed) and says what was kept."""
    threads = max(1, len(os.sched_getaffinity(0)) // n)
    env = {
        **os.environ,
        **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")},
    }
    command = [sys.executable, "-m", "tunelab", "worker", name, *options]
    err.print(f"starting {n} workers on study {name} ({threads} thread(s) each)", highlight=False)
    workers = [
        subprocess.Popen(
            [*command, "--label", f"w{i + 1}", "--worker", str(i)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path.cwd(),
            start_new_session=True,  # Ctrl-C reaches the workers through this process, once
        )
        for i in range(n)
    ]
    last_lines: dict[int, str] = {}
    quiet = threading.Event()  # set on Ctrl-C: the one line saying what was kept comes from here
    relays = [
        threading.Thread(target=_relay, args=(w, f"w{i + 1}", i, last_lines, quiet), daemon=True)
        for i, w in enumerate(workers)
    ]
    for relay in relays:
        relay.start()
    try:
        codes = [w.wait() for w in workers]
    except KeyboardInterrupt:
        quiet.set()
        _stop(workers)
        from tunelab.search.study import StudyRunner

        kept = StudyRunner(name, url).complete_trials()
        print(
            f"interrupted: stopped {n} workers; {kept} complete trials are kept in {_safe_url(url)}; trials "
            f"that were running are marked failed; `tunelab study run {name}` resumes",
            file=sys.stderr,
        )
        sys.exit(130)
    for relay in relays:
        relay.join()
    failed = [(i, code) for i, code in enumerate(codes) if code != 0]
    if failed:
        i, code = failed[0]
        raise TunelabError(
            f"{len(failed)} of {n} workers failed; w{i + 1} exited with status {code}: "
            f"{last_lines.get(i, 'no output')}"
        )


def _relay(
    worker: subprocess.Popen, label: str, index: int, last_lines: dict[int, str], quiet: threading.Event
) -> None:
    """Print a worker's stderr lines as they come, each naming the worker (none once `quiet` is set)."""
    assert worker.stderr is not None
    for line in worker.stderr:
        line = line.rstrip("\n")
        if line.strip() and not quiet.is_set():
            last_lines[index] = line
            print(line if line.startswith(f"{label} ") else f"{label}: {line}", file=sys.stderr, flush=True)


def _stop(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGINT)
    for w in workers:
        try:
            w.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
