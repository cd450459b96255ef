"""One exception root for everything a user can get wrong, and a few children."""


class EvolKVError(Exception):
    """Root of evolkv's errors: the CLI prints its message as one line and exits non-zero."""


class ConfigError(EvolKVError):
    """A compression config is malformed, invalid, or does not fit the model."""


class BudgetError(ConfigError):
    """A memory budget cannot be parsed or is out of range."""


class ModelError(EvolKVError):
    """A model cannot be resolved or loaded locally."""


class TaskError(EvolKVError):
    """A task name or task file is invalid."""


class StoreError(EvolKVError):
    """The database cannot be opened or written, or a record is missing."""


class MissingStoreError(StoreError):
    """A read found no database file at the path it was given (reads never create one)."""


class SearchInterrupted(EvolKVError):
    """A search stopped before its end; everything evaluated so far is in the store."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"search {run_id} interrupted; finish it with `evolkv resume {run_id}`")
        self.run_id = run_id
