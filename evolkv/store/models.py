"""SQLAlchemy 2.0 tables: models, runs, candidates (deduplicated by config hash), evaluations, winners and
Pareto-front points."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


VERSION_TABLE = "evolkv_schema_version"  # Alembic's revision table for evolkv's schema


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Stage(str, Enum):
    """What an evaluation was for (the ``stage`` column)."""

    SEARCH = "search"  # a candidate of generation ``generation``
    BASELINE = "baseline"  # a fixed allocation at the run's budget
    SENSITIVITY = "sensitivity"  # quant/joint: a one-layer quantization probe
    FINAL = "final"  # re-scores of the winner, the front and the baselines (held-out, exact match)


class ModelRow(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    fingerprint: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict] = mapped_column(JSON)
    __table_args__ = (UniqueConstraint("name", "fingerprint"),)


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    mode: Mapped[str] = mapped_column(String(20))
    budget: Mapped[str] = mapped_column(String(20))
    budget_kind: Mapped[str] = mapped_column(String(10))
    budget_value: Mapped[float] = mapped_column(Float)
    optimizer: Mapped[str] = mapped_column(String(40))
    seed: Mapped[int] = mapped_column(Integer)
    settings: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="running")
    best_objective: Mapped[float | None] = mapped_column(Float, nullable=True)
    generations_done: Mapped[int] = mapped_column(Integer, default=0)
    # {"stages": [{"stage", "seconds", "evaluations"}...], "peak_gpu_gib"}: where a run's time went
    timings: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    derived: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # what the run computed (its precision space)
    owner: Mapped[str | None] = mapped_column(String(100), nullable=True)  # host:pid of the running process
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)  # refreshed by every write of the run
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class CandidateRow(Base):
    __tablename__ = "candidates"
    id: Mapped[int] = mapped_column(primary_key=True)
    hash: Mapped[str] = mapped_column(String(32), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    config: Mapped[dict] = mapped_column(JSON)


class EvaluationRow(Base):
    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    stage: Mapped[str] = mapped_column(String(12), default=Stage.SEARCH.value)
    generation: Mapped[int | None] = mapped_column(Integer, nullable=True)  # search stage only
    label: Mapped[str] = mapped_column(String(60))
    split: Mapped[str] = mapped_column(String(20))
    objective: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(Text, default="")
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    worker: Mapped[str] = mapped_column(String(100), default="local")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WinnerRow(Base):
    __tablename__ = "winners"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    search_objective: Mapped[float] = mapped_column(Float)
    heldout_objective: Mapped[float | None] = mapped_column(Float, nullable=True)
    heldout_metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    provenance: Mapped[dict] = mapped_column(JSON, default=dict)


class FrontRow(Base):
    """One point of a run's Pareto front (quality loss vs. memory), with its held-out re-score."""

    __tablename__ = "front_points"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)  # 0 = fewest bits
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    objective: Mapped[float] = mapped_column(Float)  # search-split quality loss (KL to the full cache)
    bits: Mapped[float] = mapped_column(Float)  # average bits per element of the uncompressed 16-bit cache
    heldout_objective: Mapped[float | None] = mapped_column(Float, nullable=True)
    heldout_metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    winner: Mapped[bool] = mapped_column(default=False)
