"""``python -m evolkv``: the CLI, where the ``evolkv`` script is not on the PATH."""

from evolkv.cli import main

main()
