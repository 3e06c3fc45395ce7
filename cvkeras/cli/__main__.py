"""``python -m cvkeras.cli``: the same app as the ``cvkeras`` console script."""

from cvkeras.cli import main

main()
