"""Allows ``python -m homeostat`` as well as the ``homeostat`` console script."""

from homeostat import cli

raise SystemExit(cli.main())
