"""Alembic environment: migrations run on the connection the store hands over (``config.attributes``)."""

from alembic import context

from evolkv.store.models import VERSION_TABLE, Base

connection = context.config.attributes["connection"]
# not alembic's default table name: optuna keeps its own schema version in "alembic_version" of the same
# database (the study lives beside the runs)
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
