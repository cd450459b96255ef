"""Wall time per stage of a run and its peak GPU memory, in a column of their own; and who runs it (host:pid)
with a heartbeat, so a killed search shows as stale.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


COLUMNS = (("timings", sa.JSON), ("owner", sa.String(100)), ("heartbeat_at", sa.DateTime))


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}
    missing = [(name, kind) for name, kind in COLUMNS if name not in have]
    if not missing:
        return
    with op.batch_alter_table("runs") as batch:
        for name, kind in missing:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        for name, _ in COLUMNS:
            batch.drop_column(name)
