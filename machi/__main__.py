"""``python -m machi``: the ``machi`` command."""

from machi.cli import main

main()
