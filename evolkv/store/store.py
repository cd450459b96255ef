"""The store: every run, candidate, evaluation and winner, in SQLite (default) or PostgreSQL.

The store is the source of truth: the search loop reads back any evaluation it already made, so a killed
search resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, inspect, select
from sqlalchemy.exc import (ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, ProgrammingError,
                            SQLAlchemyError)
from sqlalchemy.orm import Session, sessionmaker

from evolkv.allocation import within_bits
from evolkv.config import Budget, KVConfig, ModelSpec
from evolkv.errors import MissingStoreError, StoreError
from evolkv.store.models import VERSION_TABLE, CandidateRow, Stage, EvaluationRow, FrontRow, ModelRow, RunRow, WinnerRow, utcnow


def default_url() -> str:
    if os.environ.get("EVOLKV_DB"):
        return os.environ["EVOLKV_DB"]
    return f"sqlite:///{Path.home() / '.evolkv' / 'evolkv.db'}"


def _as_url(target: str) -> str:
    return target if "://" in target else f"sqlite:///{Path(target).expanduser()}"


# how the winner was chosen (its provenance): on which split, its value and typical per-sample ratio against
# uniform there, and the contenders better on the mean that the typical-sample rule passed over
SELECTION = ("selected_on", "validation_relative", "validation_typical_ratio", "passed_over", "validation_task_metric",
             "selection_evidence")


class Store:
    """Typed access to the evolkv database at ``url`` (a SQLAlchemy URL or a SQLite file path).

    ``readonly``: what the read commands (``runs``, ``export``, ``plot``, ``lookup``) and ``evolkv.lookup`` open.
    Nothing is written, created or migrated: SQLite opens the file read-only (``mode=ro``, no WAL switch), so a
    database baked read-only into a serving image is readable; a missing file is ``MissingStoreError``; a schema
    older than this evolkv's is one error naming ``evolkv migrate``."""

    def __init__(self, url: str | None = None, readonly: bool = False) -> None:
        self.url = _as_url(url or default_url())
        self.readonly = readonly
        try:
            sqlite_file = self.url.startswith("sqlite:///") and not self.url.endswith(":memory:")
            if sqlite_file and readonly:
                self.engine = _readonly_sqlite(Path(self.url.removeprefix("sqlite:///")))
            else:
                if sqlite_file:
                    Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                self.engine = create_engine(self.url, connect_args=self._connect_args())
                if self.engine.dialect.name == "sqlite":
                    event.listen(self.engine, "connect", _sqlite_pragmas)
            if readonly:
                _check_schema(self.engine, self.url)
            else:
                _migrate(self.engine)
        except StoreError:
            raise
        except (ArgumentError, NoSuchModuleError, ValueError) as e:
            raise StoreError(f"bad database URL {self.url!r}: {e}") from e
        except ImportError as e:  # the URL names a driver that is not installed (mysql://, postgresql:// + psycopg2)
            scheme = self.url.split("://", 1)[0]
            raise StoreError(f"the database driver for {scheme}:// is not installed ({e.name or e}): install it, or "
                             "use SQLite (a path) or postgresql+psycopg://") from None
        except (OperationalError, OSError) as e:
            raise StoreError(f"cannot open database {self.url}: {_first_line(e)}") from e
        except SQLAlchemyError as e:
            raise StoreError(f"database error at {self.url}: {_first_line(e)}") from e
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _connect_args(self) -> dict[str, Any]:
        return {"timeout": 30} if self.url.startswith("sqlite") else {}

    def _session(self) -> Session:
        return self._sessions()

    def _write(self, fn):
        """Run ``fn`` in one transaction; retried when another writer holds the database (SQLite's
        ``database is locked``) or won a race to insert the same row (a shared candidate)."""
        if self.readonly:
            raise StoreError(f"the database {self.url} was opened read-only")
        for attempt in range(WRITE_RETRIES):
            try:
                with self._session() as session, session.begin():
                    return fn(session)
            except (OperationalError, IntegrityError) as e:
                if attempt == WRITE_RETRIES - 1 or not _retryable(e):
                    raise StoreError(f"database write failed: {_first_line(e)}") from e
                time.sleep(0.05 * 2**attempt + random.random() * 0.05)
            except SQLAlchemyError as e:
                raise StoreError(f"database write failed: {_first_line(e)}") from e

    # -- writes ---------------------------------------------------------------------------------------------
    def model_id(self, spec: ModelSpec) -> int:
        def fn(session: Session) -> int:
            row = session.scalar(select(ModelRow).filter_by(name=spec.name, fingerprint=spec.fingerprint))
            if row is None:
                row = ModelRow(name=spec.name, fingerprint=spec.fingerprint, spec=spec.to_dict())
                session.add(row)
                session.flush()
            return row.id
        return self._write(fn)

    def create_run(self, run_id: str, spec: ModelSpec, budget: Budget, optimizer: str, seed: int,
                   settings: dict[str, Any], mode: str = "budget") -> None:
        model_id = self.model_id(spec)
        self._write(lambda s: s.add(RunRow(id=run_id, model_id=model_id, mode=mode, budget=str(budget),
                                           budget_kind=budget.kind, budget_value=budget.value,
                                           optimizer=optimizer, seed=seed, settings=settings)))

    def update_run(self, run_id: str, **fields: Any) -> None:
        def fn(session: Session) -> None:
            row = session.get(RunRow, run_id)
            for key, value in fields.items():
                setattr(row, key, value)
            if fields.get("status") in ("finished", "failed"):
                row.finished_at = utcnow()
            row.heartbeat_at = utcnow()
        self._write(fn)

    def _candidate(self, session: Session, cfg: KVConfig, models: dict | None = None) -> CandidateRow:
        digest = cfg.hash()
        row = session.scalar(select(CandidateRow).filter_by(hash=digest))
        if row is None:
            models = {} if models is None else models
            key = (cfg.model.name, cfg.model.fingerprint)
            if key not in models:
                models[key] = session.scalar(select(ModelRow.id).filter_by(name=key[0], fingerprint=key[1]))
            row = CandidateRow(hash=digest, model_id=models[key], config=cfg.stored_dict())
            session.add(row)
            session.flush()
        return row

    def add_evaluation(self, run_id: str, cfg: KVConfig, generation: int | None, label: str, split: str, score,
                       worker: str = "local", stage: Stage = Stage.SEARCH) -> None:
        """Store one evaluation; ``generation`` is the search generation (None for the other stages)."""
        self.add_evaluations(run_id, [(cfg, generation, label, split, score, worker, stage)])

    def add_evaluations(self, run_id: str, items: Sequence[tuple]) -> None:
        """Store many evaluations, each ``(cfg, generation, label, split, score, worker, stage)``, in one
        transaction (a population's results: one commit instead of one per candidate)."""
        def fn(session: Session) -> None:
            candidates: dict[str, CandidateRow] = {}
            models: dict = {}
            for cfg, generation, label, split, score, worker, stage in items:
                digest = cfg.hash()
                if digest not in candidates:
                    candidates[digest] = self._candidate(session, cfg, models)
                objective = score.objective if math.isfinite(score.objective) else None
                session.add(EvaluationRow(run_id=run_id, candidate_id=candidates[digest].id,
                                          stage=Stage(stage).value, generation=generation, label=label,
                                          split=split, objective=objective, metrics=score.metrics,
                                          status=score.status, reason=score.reason, duration_s=score.duration_s,
                                          worker=worker))
        if items:
            self._write(fn)

    def add_failed_build(self, run_id: str, spec: ModelSpec, genes: list[float], generation: int, label: str,
                         reason: str) -> None:
        """A candidate whose genes could not be turned into a config: kept as data (its genes, in a candidate
        row of schema ``evolkv.genes/1``), with the reason, as a failed evaluation on the search split."""
        genes = [float(g) for g in genes]
        digest = "g" + hashlib.sha256(json.dumps(genes).encode()).hexdigest()[:23]
        model_id = self.model_id(spec)

        def fn(session: Session) -> None:
            row = session.scalar(select(CandidateRow).filter_by(hash=digest))
            if row is None:
                row = CandidateRow(hash=digest, model_id=model_id, config={"schema": "evolkv.genes/1", "genes": genes})
                session.add(row)
                session.flush()
            if session.scalar(select(EvaluationRow).filter_by(run_id=run_id, candidate_id=row.id,
                                                              generation=generation)) is not None:
                return  # a resumed run re-proposes the same genes
            session.add(EvaluationRow(run_id=run_id, candidate_id=row.id, generation=generation, label=label,
                                      split="search", objective=None, metrics={}, status="failed",
                                      reason=reason[:500], worker="build"))
        self._write(fn)

    def set_winner(self, run_id: str, cfg: KVConfig, search_objective: float, heldout_objective: float | None,
                   heldout_metrics: dict[str, float]) -> None:
        def fn(session: Session) -> None:
            candidate = self._candidate(session, cfg)
            session.merge(WinnerRow(run_id=run_id, candidate_id=candidate.id, search_objective=search_objective,
                                    heldout_objective=heldout_objective, heldout_metrics=heldout_metrics,
                                    provenance=cfg.provenance))
        self._write(fn)

    def set_front(self, run_id: str, points: list[tuple[KVConfig, float, float, float | None, dict, bool]]) -> None:
        """Replace the run's Pareto front: (config, search loss, bits, held-out loss, held-out metrics, winner)."""
        def fn(session: Session) -> None:
            for row in session.scalars(select(FrontRow).where(FrontRow.run_id == run_id)):
                session.delete(row)
            for i, (cfg, objective, bits, heldout, metrics, winner) in enumerate(points):
                candidate = self._candidate(session, cfg)
                session.add(FrontRow(run_id=run_id, index=i, candidate_id=candidate.id, objective=objective,
                                     bits=bits, heldout_objective=heldout, heldout_metrics=metrics, winner=winner))
        self._write(fn)

    def front(self, run_id: str) -> list[tuple[dict[str, Any], KVConfig]]:
        """The run's front, fewest bits first: (point, config)."""
        with self._session() as session:
            rows = session.execute(select(FrontRow, CandidateRow.config).join(CandidateRow)
                                   .where(FrontRow.run_id == self.run(run_id).id).order_by(FrontRow.index)).all()
            return [({"point": row.index, "objective": row.objective, "bits": row.bits,
                      "heldout_objective": row.heldout_objective, "heldout_metrics": row.heldout_metrics,
                      "winner": row.winner}, KVConfig.from_dict(config).with_provenance(label=f"front:{row.index}"))
                    for row, config in rows]

    # -- reads ----------------------------------------------------------------------------------------------
    def run(self, run_id: str) -> RunRow:
        with self._session() as session:
            row = session.get(RunRow, run_id)
            if row is None:
                if not _RUN_ID.fullmatch(run_id or ""):  # a prefix is literal hex: no '%', '_' or ''
                    raise StoreError(f"{run_id!r} is not a run id: give the id (or a prefix of it) in hex digits, "
                                     "as `evolkv runs list` shows it")
                matches = session.scalars(select(RunRow).where(RunRow.id.startswith(run_id, autoescape=True))).all()
                if len(matches) != 1:
                    raise StoreError(f"no run {run_id!r} in {self.url}" if not matches
                                     else f"run id {run_id!r} is ambiguous ({len(matches)} runs)")
                row = matches[0]
            return row

    def find_evaluations(self, run_id: str, digest: str, split: str) -> list[EvaluationRow]:
        """This run's evaluations of the config with hash ``digest`` on ``split``, oldest first."""
        return self.find_many(run_id, [digest], split).get(digest, [])

    def find_many(self, run_id: str, digests: Sequence[str], split: str) -> dict[str, list[EvaluationRow]]:
        """``find_evaluations`` for many hashes in one query: hash -> its evaluations, oldest first (hashes
        this run never evaluated on ``split`` are absent)."""
        found: dict[str, list[EvaluationRow]] = {}
        wanted = list(dict.fromkeys(digests))
        with self._session() as session:
            for start in range(0, len(wanted), 500):  # under every database's bound-parameter limit
                rows = session.execute(select(EvaluationRow, CandidateRow.hash).join(CandidateRow)
                                       .where(EvaluationRow.run_id == run_id, EvaluationRow.split == split,
                                              CandidateRow.hash.in_(wanted[start:start + 500]))
                                       .order_by(EvaluationRow.id)).all()
                for row, digest in rows:
                    found.setdefault(digest, []).append(row)
        return found

    def evaluations(self, run_id: str) -> list[tuple[EvaluationRow, str]]:
        with self._session() as session:
            rows = session.execute(select(EvaluationRow, CandidateRow.hash).join(CandidateRow)
                                   .where(EvaluationRow.run_id == run_id).order_by(EvaluationRow.id)).all()
            return [(row, digest) for row, digest in rows]

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._session() as session:
            rows = session.execute(select(RunRow, ModelRow.name).join(ModelRow)
                                   .order_by(RunRow.created_at.desc()).limit(limit)).all()
            return [_run_dict(run, name) for run, name in rows]

    def winner(self, run_id: str) -> tuple[WinnerRow, KVConfig] | None:
        with self._session() as session:
            row = session.get(WinnerRow, self.run(run_id).id)
            if row is None:
                return None
            config = session.get(CandidateRow, row.candidate_id).config
            return row, KVConfig.from_dict(config).with_provenance(**(row.provenance or {}))

    def detail(self, run_id: str) -> dict[str, Any]:
        """A run with its per-generation progress, baselines and winner (the data of ``runs show``)."""
        run = self.run(run_id)
        with self._session() as session:
            model = session.get(ModelRow, run.model_id)
        generations: dict[int, list[float]] = defaultdict(list)
        failed: dict[int, int] = defaultdict(int)
        over: dict[int, int] = defaultdict(int)  # quant/joint: candidates above the target bits
        labelled: dict[str, dict[str, Any]] = defaultdict(dict)
        settings = run.settings or {}
        target = settings.get("target_bits") if settings.get("mode", "tokens") != "tokens" else None
        for row, _ in self.evaluations(run.id):
            if row.stage == Stage.SEARCH and row.split.split("@")[0] == "search":  # the pool or a draw from it
                if row.objective is None:
                    failed[row.generation] += 1
                elif target is not None and not within_bits(row.metrics.get("bits", math.inf), target):
                    over[row.generation] += 1  # progress is the best loss the run can pick: at or under target
                else:
                    generations[row.generation].append(row.objective)
            if row.stage in (Stage.BASELINE, Stage.FINAL) and not row.label.startswith("front:"):
                labelled[row.label][row.split] = {"objective": row.objective, **row.metrics}
        progress, best = [], math.inf
        for gen in sorted(set(generations) | set(failed) | set(over)):
            values = generations.get(gen, [])
            best = min([best, *values])
            progress.append({"generation": gen, "evaluated": len(values) + failed[gen] + over[gen],
                             "failed": failed[gen],
                             "best": min(values) if values else None,
                             "mean": sum(values) / len(values) if values else None, "best_so_far": best})
        winner = self.winner(run.id)
        front = [{**point, "precisions": _precisions(cfg)} for point, cfg in self.front(run.id)]
        return {**_run_dict(run, model.name), "settings": run.settings, "derived": run.derived or {},
                "timings": run.timings or {},
                "generations": progress,
                "results": dict(labelled), "front": front,
                "winner": None if winner is None else {"search_objective": winner[0].search_objective,
                                                       "heldout_objective": winner[0].heldout_objective,
                                                       "heldout_metrics": winner[0].heldout_metrics,
                                                       "config_hash": winner[1].hash(),
                                                       "source": winner[1].provenance.get("source", "search"),
                                                       "selection": {key: winner[1].provenance[key] for key in SELECTION
                                                                     if key in winner[1].provenance}}}

    def lookup(self, model: str, budget: Budget) -> tuple[KVConfig, dict[str, Any]] | None:
        """The stored winner for ``model`` with the largest budget at or under ``budget`` (best held-out first)."""
        with self._session() as session:
            rows = session.execute(
                select(WinnerRow, RunRow, CandidateRow.config).join(RunRow, WinnerRow.run_id == RunRow.id)
                .join(CandidateRow, WinnerRow.candidate_id == CandidateRow.id).join(ModelRow)
                .where(func.lower(ModelRow.name) == model.lower(), RunRow.budget_kind == budget.kind,
                       RunRow.budget_value <= budget.value + 1e-12)).all()
        if not rows:
            return None
        def rank(row):  # the largest budget, then the lowest held-out loss (0.0, lossless, is the best)
            heldout = row[0].heldout_objective
            return row[1].budget_value, -(heldout if heldout is not None else math.inf)

        winner, run, config = max(rows, key=rank)
        return KVConfig.from_dict(config).with_provenance(**(winner.provenance or {})), {"run_id": run.id, "budget": run.budget,
                                            "search_objective": winner.search_objective,
                                            "heldout_objective": winner.heldout_objective}


    def budget_curve(self, model: str, split: str = "heldout") -> list[dict[str, Any]]:
        """Every finished token run of ``model`` with a percentage budget: {"budget": fraction, "values": {"winner"
        or a baseline's name: its objective on ``split``}}, what ``plot --curve`` and ``report`` draw."""
        points = []
        for row in self.runs(100000):
            if row["model"].lower() != model.lower() or row["mode"] in ("quant", "joint") or row["status"] != "finished":
                continue
            detail = self.detail(row["id"])
            if not detail.get("winner") or not detail["budget"].endswith("%"):
                continue
            values = {label.removeprefix("baseline:"): (splits.get(split) or {}).get("objective")
                      for label, splits in detail["results"].items()
                      if label == "winner" or (label.startswith("baseline:") and label != "baseline:full")}
            points.append({"budget": float(detail["budget"].rstrip("%")) / 100, "values": values})
        return points

    def winners_by_budget(self, model: str, kind: str = "fraction") -> list[KVConfig]:
        """For each budget stored for ``model`` (token runs of that budget kind), the winner ``lookup`` returns
        at it: the lowest held-out loss among that budget's runs."""
        with self._session() as session:
            rows = session.execute(
                select(WinnerRow, RunRow, CandidateRow.config).join(RunRow, WinnerRow.run_id == RunRow.id)
                .join(CandidateRow, WinnerRow.candidate_id == CandidateRow.id).join(ModelRow)
                .where(func.lower(ModelRow.name) == model.lower(), RunRow.budget_kind == kind,
                       RunRow.mode.notin_(("quant", "joint")))).all()
        best: dict[float, tuple] = {}
        for winner, run, config in rows:
            heldout = winner.heldout_objective if winner.heldout_objective is not None else math.inf
            if run.budget_value not in best or heldout < best[run.budget_value][0]:
                best[run.budget_value] = (heldout, KVConfig.from_dict(config).with_provenance(
                    **(winner.provenance or {})))
        return [cfg for _, (_, cfg) in sorted(best.items())]


def _precisions(cfg: KVConfig) -> str:
    """``K4V2x10 K8V4x8``: the layers' precision pairs, counted."""
    counts: dict[str, int] = {}
    for layer in cfg.layers:
        counts[layer.precision] = counts.get(layer.precision, 0) + 1
    return " ".join(f"{name}x{n}" for name, n in counts.items())


STALE_AFTER_S = 1800  # a running search writes at least once a stage; silent this long, it is presumed dead


def _is_stale(run: RunRow) -> bool:
    """A ``running`` run whose process is gone: its pid is dead on this host, or no heartbeat for a while."""
    if run.status != "running":
        return False
    host, _, pid = (run.owner or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    beat = run.heartbeat_at or run.created_at
    return beat is not None and (utcnow() - beat).total_seconds() > STALE_AFTER_S


def _run_dict(run: RunRow, model: str) -> dict[str, Any]:
    status = "stale" if _is_stale(run) else run.status
    return {"id": run.id, "model": model, "mode": run.mode, "budget": run.budget, "optimizer": run.optimizer,
            "seed": run.seed, "status": status, "best_objective": run.best_objective,
            "generations_done": run.generations_done,
            "created_at": run.created_at.isoformat(timespec="seconds") if run.created_at else None,
            "finished_at": run.finished_at.isoformat(timespec="seconds") if run.finished_at else None}


WRITE_RETRIES = 8
_RUN_ID = re.compile(r"[0-9a-f]{1,32}")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _retryable(error: Exception) -> bool:
    text = str(getattr(error, "orig", None) or error).lower()
    return isinstance(error, IntegrityError) or "locked" in text or "busy" in text or "deadlock" in text


def _migrate(engine) -> None:
    """Bring the schema to the newest Alembic revision (kept in ``VERSION_TABLE``). A database made before
    migrations existed (evolkv 0.1 created its tables directly) is stamped at revision 0001 first, then
    upgraded: upgraded, not broken."""
    from alembic import command
    from alembic.config import Config

    for attempt in range(WRITE_RETRIES):
        try:
            with engine.begin() as connection:
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                config.attributes["connection"] = connection
                tables = set(inspect(connection).get_table_names())
                if VERSION_TABLE not in tables and "runs" in tables:
                    command.stamp(config, "0001")
                command.upgrade(config, "head")
            return
        except (OperationalError, IntegrityError, ProgrammingError) as e:  # two processes opening a new database
            # at once: PostgreSQL says the other's version table "already exists" (a ProgrammingError)
            if attempt == WRITE_RETRIES - 1 or not _retryable(e) and "already exists" not in str(e):
                raise
            time.sleep(0.05 * 2**attempt + random.random() * 0.05)


def head_revision() -> str:
    """The schema revision this evolkv writes (the newest migration)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def _check_schema(engine, url: str) -> None:
    """A read-only open: the database must be evolkv's, at this evolkv's schema (nothing is migrated)."""
    from sqlalchemy import text

    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        if "runs" not in tables:
            raise StoreError(f"{url} is not an evolkv database (it has no runs table)")
        current = (connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
                   if VERSION_TABLE in tables else None)
    head = head_revision()
    if current != head:
        raise StoreError(f"the database {url} has schema revision {current or '(none)'}, this evolkv reads {head}: "
                         f"upgrade it once, where it is writable, with `evolkv migrate --db {url}`")


def _readonly_sqlite(path: Path):
    """An engine over the SQLite file ``path`` opened read-only: never created, written, or switched to WAL. A WAL
    database in a directory this process cannot write (no ``-shm`` file to make) is opened immutable instead."""
    import sqlite3

    if not path.is_file():
        raise MissingStoreError(f"no evolkv database at {path}: a search creates it (evolkv search ...), or give --db")
    uri = path.resolve().as_uri()

    def connect(flags: str):
        return lambda: sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=30, check_same_thread=False)

    engine = create_engine("sqlite://", creator=connect("mode=ro"))
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
    except OperationalError as e:
        if "unable to open" not in str(e) and "readonly" not in str(e):
            raise
        engine.dispose()
        engine = create_engine("sqlite://", creator=connect("mode=ro&immutable=1"))
    return engine


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error)
    return text.splitlines()[0] if text else type(error).__name__
