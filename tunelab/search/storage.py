"""tunelab's own tables, beside Optuna's in the study database (any SQLAlchemy URL): one model per table.

- `tunelab_evaluations`: the evaluation cache. One row per (model fingerprint, reference key, config key,
  evaluator key), enforced by a unique constraint and written insert-or-ignore, so no config is ever scored twice
  by the same evaluator, across studies and workers.
- `tunelab_front`: each study's materialised Pareto front (replaced after every trial).
- `tunelab_hypervolume`: each study's hypervolume after each completed trial.
- `tunelab_verifications`: front members re-scored more carefully (`tunelab study verify`).
- `tunelab_sensitivity`: per (decoder, tensor group) profiles (`tunelab sensitivity`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tunelab.errors import TunelabError
from tunelab.evaluator import Metrics

__all__ = [
    "EvaluationRow",
    "FrontRow",
    "HypervolumeRow",
    "ResultStore",
    "SensitivityRow",
    "VerificationRow",
]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class EvaluationRow(Base):
    __tablename__ = "tunelab_evaluations"
    __table_args__ = (
        UniqueConstraint(
            "model_fingerprint", "reference_key", "config_key", "evaluator_key", name="uq_evaluation"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    reference_key: Mapped[str] = mapped_column(String(64))
    config_key: Mapped[str] = mapped_column(String(64), index=True)
    evaluator_key: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class FrontRow(Base):
    __tablename__ = "tunelab_front"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study: Mapped[str] = mapped_column(String(512), index=True)
    trial: Mapped[int] = mapped_column(Integer)
    config_key: Mapped[str] = mapped_column(String(64))
    values: Mapped[str] = mapped_column(Text)  # JSON: objective name -> value
    preset: Mapped[str | None] = mapped_column(String(128), nullable=True)
    verified: Mapped[bool] = mapped_column(Boolean, default=False)


class HypervolumeRow(Base):
    __tablename__ = "tunelab_hypervolume"
    __table_args__ = (UniqueConstraint("study", "trial", name="uq_hypervolume"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study: Mapped[str] = mapped_column(String(512), index=True)
    trial: Mapped[int] = mapped_column(Integer)
    hypervolume: Mapped[float] = mapped_column(Float)


class VerificationRow(Base):
    __tablename__ = "tunelab_verifications"
    __table_args__ = (UniqueConstraint("study", "trial", "evaluator_key", name="uq_verification"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study: Mapped[str] = mapped_column(String(512), index=True)
    trial: Mapped[int] = mapped_column(Integer)
    config_key: Mapped[str] = mapped_column(String(64))
    evaluator_key: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[str] = mapped_column(Text)
    flagged: Mapped[bool] = mapped_column(
        Boolean, default=False
    )  # verified top-1 outside the search interval
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class SensitivityRow(Base):
    __tablename__ = "tunelab_sensitivity"
    __table_args__ = (UniqueConstraint("profile", "layer", "tensor", "lowered", name="uq_sensitivity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    profile: Mapped[str] = mapped_column(String(64), index=True)  # evaluator key + baseline config key
    layer: Mapped[int] = mapped_column(Integer)
    tensor: Mapped[str] = mapped_column(String(32))
    lowered: Mapped[str] = mapped_column(String(64))  # the choice label the group was lowered to
    metrics: Mapped[str] = mapped_column(Text)  # Metrics of the lowered config
    baseline: Mapped[str] = mapped_column(Text)  # Metrics of the baseline config


class ResultStore:
    """tunelab's tables in the database at `url` (created on first use)."""

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        try:
            self.engine = engine or create_engine(url, **_engine_options(url))
            Base.metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise TunelabError(f"cannot open the study database {_safe(url)}: {_first_line(exc)}") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with Session(self.engine) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise TunelabError(f"study database {_safe(self.url)}: {_first_line(exc)}") from None

    # -- the evaluation cache
    def cached(self, fingerprint: str, reference: str, config_key: str, evaluator: str) -> Metrics | None:
        with self.session() as s:
            row = s.scalar(
                select(EvaluationRow.metrics).where(
                    EvaluationRow.model_fingerprint == fingerprint,
                    EvaluationRow.reference_key == reference,
                    EvaluationRow.config_key == config_key,
                    EvaluationRow.evaluator_key == evaluator,
                )
            )
        return None if row is None else Metrics.from_dict(json.loads(row))

    def remember(self, fingerprint: str, reference: str, metrics: Metrics) -> None:
        """Insert-or-ignore: a concurrent writer of the same key wins, this write is dropped."""
        values = {
            "model_fingerprint": fingerprint,
            "reference_key": reference,
            "config_key": metrics.config_key,
            "evaluator_key": metrics.evaluator,
            "metrics": json.dumps(metrics.to_dict()),
            "created": _now(),
        }
        with self.session() as s:
            s.execute(
                _insert_ignore(
                    self.engine,
                    EvaluationRow,
                    ["model_fingerprint", "reference_key", "config_key", "evaluator_key"],
                ).values(**values)
            )

    def evaluation_count(self) -> int:
        with self.session() as s:
            return len(s.scalars(select(EvaluationRow.id)).all())

    # -- fronts and hypervolume
    def replace_front(self, study: str, members: Iterable[dict[str, Any]]) -> None:
        with self.session() as s:
            s.execute(delete(FrontRow).where(FrontRow.study == study))
            for m in members:
                s.add(
                    FrontRow(
                        study=study,
                        trial=m["trial"],
                        config_key=m["config_key"],
                        values=json.dumps(m["values"]),
                        preset=m.get("preset"),
                        verified=bool(m.get("verified")),
                    )
                )

    def front(self, study: str) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(FrontRow).where(FrontRow.study == study).order_by(FrontRow.trial)).all()
            return [
                {
                    "trial": r.trial,
                    "config_key": r.config_key,
                    "values": json.loads(r.values),
                    "preset": r.preset,
                    "verified": r.verified,
                }
                for r in rows
            ]

    def record_hypervolume(self, study: str, trial: int, value: float) -> None:
        with self.session() as s:
            s.execute(
                _insert_ignore(self.engine, HypervolumeRow, ["study", "trial"]).values(
                    study=study, trial=trial, hypervolume=value
                )
            )

    def hypervolumes(self, study: str) -> list[tuple[int, float]]:
        with self.session() as s:
            rows = s.execute(
                select(HypervolumeRow.trial, HypervolumeRow.hypervolume)
                .where(HypervolumeRow.study == study)
                .order_by(HypervolumeRow.trial)
            ).all()
        return [(t, v) for t, v in rows]

    # -- verification
    def record_verification(self, study: str, trial: int, metrics: Metrics, flagged: bool) -> None:
        with self.session() as s:
            s.execute(
                delete(VerificationRow).where(
                    VerificationRow.study == study,
                    VerificationRow.trial == trial,
                    VerificationRow.evaluator_key == metrics.evaluator,
                )
            )
            s.add(
                VerificationRow(
                    study=study,
                    trial=trial,
                    config_key=metrics.config_key,
                    evaluator_key=metrics.evaluator,
                    metrics=json.dumps(metrics.to_dict()),
                    flagged=flagged,
                )
            )

    def verifications(self, study: str) -> dict[int, tuple[Metrics, bool]]:
        """The latest verification of each trial of a study."""
        with self.session() as s:
            rows = s.scalars(
                select(VerificationRow)
                .where(VerificationRow.study == study)
                .order_by(VerificationRow.created)
            ).all()
            return {r.trial: (Metrics.from_dict(json.loads(r.metrics)), r.flagged) for r in rows}

    # -- sensitivity
    def record_sensitivity(
        self, profile: str, layer: int, tensor: str, lowered: str, metrics: Metrics, baseline: Metrics
    ) -> None:
        with self.session() as s:
            s.execute(
                _insert_ignore(self.engine, SensitivityRow, ["profile", "layer", "tensor", "lowered"]).values(
                    profile=profile,
                    layer=layer,
                    tensor=tensor,
                    lowered=lowered,
                    metrics=json.dumps(metrics.to_dict()),
                    baseline=json.dumps(baseline.to_dict()),
                )
            )

    def sensitivity(self, profile: str) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(
                select(SensitivityRow).where(SensitivityRow.profile == profile).order_by(SensitivityRow.id)
            ).all()
            return [
                {
                    "layer": r.layer,
                    "tensor": r.tensor,
                    "lowered": r.lowered,
                    "metrics": Metrics.from_dict(json.loads(r.metrics)),
                    "baseline": Metrics.from_dict(json.loads(r.baseline)),
                }
                for r in rows
            ]

    def delete_study(self, study: str) -> None:
        with self.session() as s:
            for model in (FrontRow, HypervolumeRow, VerificationRow):
                s.execute(delete(model).where(model.study == study))


def _insert_ignore(engine: Engine, model: type[Base], keys: list[str]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING on the unique `keys` (SQLite and PostgreSQL)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise TunelabError(f"study storage {engine.dialect.name} is not supported (use SQLite or PostgreSQL)")
    return insert(model).on_conflict_do_nothing(index_elements=keys)


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def _safe(url: str) -> str:
    """A URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
