"""Re-score a study's front more carefully (more windows, exact accumulation) and flag what does not hold."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunelab.evaluator import Evaluator, Metrics
from tunelab.interop.decoder_json import parse_decoder_config
from tunelab.presets import hard_defaults
from tunelab.search.study import StudyRunner, TrialRecord, front, trial_records

__all__ = ["Verified", "outside_interval", "verify_front"]


@dataclass(frozen=True)
class Verified:
    record: TrialRecord
    metrics: Metrics
    flagged: bool


def outside_interval(search: Metrics, verified: Metrics) -> bool:
    """The verified top-1 falls outside the search-time 95% interval."""
    if search.top1_ci is None or verified.top1 is None:
        return False
    low, high = search.top1_ci
    return not low <= verified.top1 <= high


def verify_front(
    runner: StudyRunner, evaluator: Evaluator, on_member: Callable[[Verified], None] | None = None
) -> list[Verified]:
    """Score every current front member with `evaluator` (through the cache), store it, refresh the front."""
    records = trial_records(runner.study, runner.store)
    results = []
    for member in front([_unverified(r) for r in records], runner.spec):
        record = member.record
        precision = parse_decoder_config(
            record.config, lambda _n: hard_defaults(), source=f"trial {record.number}"
        )
        metrics, _ = runner.score_with(evaluator, precision.precision)
        flagged = outside_interval(record.metrics, metrics)
        runner.store.record_verification(runner.study.study_name, record.number, metrics, flagged)
        result = Verified(record, metrics, flagged)
        results.append(result)
        if on_member is not None:
            on_member(result)
    runner.refresh()
    return results


def _unverified(record: TrialRecord) -> TrialRecord:
    """The record as the search saw it (verification re-checks the search-time front)."""
    from dataclasses import replace

    return replace(record, verified=None, flagged=False)
