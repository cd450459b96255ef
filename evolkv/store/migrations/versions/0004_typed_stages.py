"""Typed records: each evaluation says its stage (search, baseline, sensitivity, final) in a column instead of
a negative generation number; a run's derived data (the precision space) gets its own column instead of
riding in its settings.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# the old protocol: generation -1 = baselines, -2 = final re-scores (and exact match), -3 = sensitivity
BACKFILL = ("update evaluations set stage = case when generation = -1 then 'baseline' "
            "when generation = -3 then 'sensitivity' when generation < 0 then 'final' else 'search' end "
            "where stage is null")


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if "stage" not in {c["name"] for c in inspector.get_columns("evaluations")}:
        with op.batch_alter_table("evaluations") as batch:
            batch.add_column(sa.Column("stage", sa.String(12), nullable=True))
            batch.alter_column("generation", existing_type=sa.Integer, nullable=True)
        op.execute(BACKFILL)
        op.execute("update evaluations set generation = null where generation < 0")
        with op.batch_alter_table("evaluations") as batch:
            batch.alter_column("stage", existing_type=sa.String(12), nullable=False)
    if "derived" not in {c["name"] for c in inspector.get_columns("runs")}:
        with op.batch_alter_table("runs") as batch:
            batch.add_column(sa.Column("derived", sa.JSON, nullable=True))
        runs = sa.table("runs", sa.column("id", sa.String), sa.column("settings", sa.JSON),
                        sa.column("derived", sa.JSON))
        for run_id, settings in bind.execute(sa.select(runs.c.id, runs.c.settings)).all():
            if isinstance(settings, dict) and "space" in settings:
                rest = {k: v for k, v in settings.items() if k != "space"}
                bind.execute(runs.update().where(runs.c.id == run_id)
                             .values(settings=rest, derived={"space": settings["space"]}))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("stage")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("derived")
