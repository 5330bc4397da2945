"""``python -m machi.cli``: the ``machi`` command (used to spawn daemons in tests)."""

from machi.cli import main

main()
