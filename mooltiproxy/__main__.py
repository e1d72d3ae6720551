"""``python -m mooltiproxy`` is the ``mooltiproxy`` command."""

from .cli.main import main

raise SystemExit(main())
