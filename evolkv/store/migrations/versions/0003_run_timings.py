"""Wall time per stage of a run and its peak GPU memory, in a column of their own.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "timings" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}:
        return
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("timings", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("timings")
