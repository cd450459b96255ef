"""The schema of evolkv 0.1: models, runs, candidates, evaluations, winners.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _missing(name: str) -> bool:
    return name not in sa.inspect(op.get_bind()).get_table_names()


def upgrade() -> None:
    if _missing("models"):
        op.create_table(
            "models",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(300), nullable=False),
            sa.Column("fingerprint", sa.String(32), nullable=False),
            sa.Column("spec", sa.JSON, nullable=False),
            sa.UniqueConstraint("name", "fingerprint"),
        )
    if _missing("runs"):
        op.create_table(
            "runs",
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
            sa.Column("mode", sa.String(20), nullable=False),
            sa.Column("budget", sa.String(20), nullable=False),
            sa.Column("budget_kind", sa.String(10), nullable=False),
            sa.Column("budget_value", sa.Float, nullable=False),
            sa.Column("optimizer", sa.String(40), nullable=False),
            sa.Column("seed", sa.Integer, nullable=False),
            sa.Column("settings", sa.JSON, nullable=False),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("best_objective", sa.Float, nullable=True),
            sa.Column("generations_done", sa.Integer, nullable=False),
            sa.Column("created_at", sa.DateTime, nullable=False),
            sa.Column("finished_at", sa.DateTime, nullable=True),
        )
    if _missing("candidates"):
        op.create_table(
            "candidates",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("hash", sa.String(32), nullable=False, unique=True),
            sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
            sa.Column("config", sa.JSON, nullable=False),
        )
    if _missing("evaluations"):
        op.create_table(
            "evaluations",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False, index=True),
            sa.Column("candidate_id", sa.Integer, sa.ForeignKey("candidates.id"), nullable=False),
            sa.Column("generation", sa.Integer, nullable=False),
            sa.Column("label", sa.String(60), nullable=False),
            sa.Column("split", sa.String(20), nullable=False),
            sa.Column("objective", sa.Float, nullable=True),
            sa.Column("metrics", sa.JSON, nullable=False),
            sa.Column("status", sa.String(10), nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("duration_s", sa.Float, nullable=False),
            sa.Column("worker", sa.String(100), nullable=False),
            sa.Column("created_at", sa.DateTime, nullable=False),
        )
    if _missing("winners"):
        op.create_table(
            "winners",
            sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),
            sa.Column("candidate_id", sa.Integer, sa.ForeignKey("candidates.id"), nullable=False),
            sa.Column("search_objective", sa.Float, nullable=False),
            sa.Column("heldout_objective", sa.Float, nullable=True),
            sa.Column("heldout_metrics", sa.JSON, nullable=False),
            sa.Column("provenance", sa.JSON, nullable=False),
        )


def downgrade() -> None:
    for table in ("winners", "evaluations", "candidates", "runs", "models"):
        op.drop_table(table)
