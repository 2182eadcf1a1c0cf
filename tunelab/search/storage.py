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
    event,
    func,
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
    "engine_options",
    "normalise_url",
    "serialise_sqlite",
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
        if engine is None:
            url = normalise_url(url)
        try:
            if engine is None:
                engine = create_engine(url, **engine_options(url))
                serialise_sqlite(engine)
            self.engine = engine
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

    def _metrics(self, text: object, table: type[Base]) -> Metrics:
        """Metrics stored as JSON text in one of tunelab's tables; a corrupt row is one line naming the table."""
        where = f"study database {_safe(self.url)}, table {table.__tablename__}"
        try:
            data = json.loads(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TunelabError(f"{where}: a row's metrics are not JSON (the database is corrupt)") from None
        try:
            return Metrics.from_dict(data)
        except TunelabError as exc:
            raise TunelabError(f"{where}: corrupt stored {exc}") from None

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
        return None if row is None else self._metrics(row, EvaluationRow)

    def check_cached(self, evaluator: str) -> None:
        """Read every cached score of `evaluator`: a corrupt row fails now, not in the middle of a trial."""
        with self.session() as s:
            rows = s.scalars(
                select(EvaluationRow.metrics).where(EvaluationRow.evaluator_key == evaluator)
            ).all()
        for row in rows:
            self._metrics(row, EvaluationRow)

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

    def model_fingerprints(self, evaluator_keys: Iterable[str]) -> set[str]:
        """The model fingerprints of the cached scores these evaluators produced."""
        keys = sorted(set(evaluator_keys))
        if not keys:
            return set()
        with self.session() as s:
            query = select(EvaluationRow.model_fingerprint).where(EvaluationRow.evaluator_key.in_(keys))
            return set(s.scalars(query.distinct()))

    def evaluation_count(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.count(EvaluationRow.id))) or 0

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
            return {r.trial: (self._metrics(r.metrics, VerificationRow), r.flagged) for r in rows}

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
                    "metrics": self._metrics(r.metrics, SensitivityRow),
                    "baseline": self._metrics(r.baseline, SensitivityRow),
                }
                for r in rows
            ]

    def copy_to(self, target: ResultStore, study: str) -> None:
        """Copy a study's front, hypervolume and verification rows, and the whole evaluation cache and sensitivity
        profiles (they serve every study), into `target`, insert-or-ignore: rows it already has stay."""
        target.replace_front(study, self.front(study))
        for model in (HypervolumeRow, VerificationRow, EvaluationRow, SensitivityRow):
            columns = [c.name for c in model.__table__.columns if c.name != "id"]
            query = select(*(model.__table__.c[c] for c in columns))
            if "study" in columns:
                query = query.where(model.__table__.c.study == study)
            with self.session() as s:
                rows = [dict(zip(columns, row, strict=True)) for row in s.execute(query)]
            if rows:
                with target.session() as t:
                    t.execute(_insert_ignore(target.engine, model, _unique_columns(model)), rows)

    def delete_study(self, study: str) -> None:
        with self.session() as s:
            for model in (FrontRow, HypervolumeRow, VerificationRow):
                s.execute(delete(model).where(model.study == study))


def _unique_columns(model: type[Base]) -> list[str]:
    constraint = next(c for c in model.__table__.constraints if isinstance(c, UniqueConstraint))
    return [column.name for column in constraint.columns]


def _insert_ignore(engine: Engine, model: type[Base], keys: list[str]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING on the unique `keys` (SQLite and PostgreSQL)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise TunelabError(f"study storage {engine.dialect.name} is not supported (use SQLite or PostgreSQL)")
    return insert(model).on_conflict_do_nothing(index_elements=keys)


SQLITE_BUSY_TIMEOUT = 120  # seconds a SQLite writer waits for another process's write to finish


def normalise_url(url: str) -> str:
    """`postgresql://` and `postgres://` without a driver mean psycopg (3), the driver tunelab installs."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def engine_options(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options: SQLite waits for other writers (see `serialise_sqlite`); PostgreSQL drops dead
    pooled connections and gives up connecting after 10 s instead of hanging."""
    if url.startswith("sqlite"):
        # The driver's own transaction handling off: `serialise_sqlite` issues BEGIN IMMEDIATE itself.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT, "isolation_level": None}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {"pool_pre_ping": True}


def serialise_sqlite(engine: Engine) -> None:
    """Make SQLite safe for several local worker processes: WAL journal (readers never block the writer) and
    every transaction begun IMMEDIATE, so a writer takes the write lock up front and waits out the busy timeout
    instead of failing with "database is locked" when it upgrades from reading to writing."""
    if engine.dialect.name != "sqlite" or getattr(engine, "_tunelab_serialised", False):
        return

    if engine.url.database not in (None, "", ":memory:"):
        with (
            engine.connect() as connection
        ):  # before the listener: the journal mode changes outside a transaction
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine._tunelab_serialised = True  # type: ignore[attr-defined]


def _safe(url: str) -> str:
    """A URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return (
            f"{url[:80]!r} (not a database URL: expected e.g. sqlite:///studies/NAME.db or postgresql://...)"
        )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
