"""``python -m tokenrelay.cli``: the ``tokenrelay`` command."""

from tokenrelay.cli import main

main()
