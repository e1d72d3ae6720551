"""``python -m mooltiproxy`` is the ``mooltiproxy`` command."""

from .cli import main

raise SystemExit(main())
