"""Pareto fronts of quant/joint runs: one row per non-dominated candidate.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "front_points" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "front_points",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("index", sa.Integer, nullable=False),
        sa.Column("candidate_id", sa.Integer, sa.ForeignKey("candidates.id"), nullable=False),
        sa.Column("objective", sa.Float, nullable=False),
        sa.Column("bits", sa.Float, nullable=False),
        sa.Column("heldout_objective", sa.Float, nullable=True),
        sa.Column("heldout_metrics", sa.JSON, nullable=False),
        sa.Column("winner", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("front_points")
