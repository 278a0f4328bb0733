"""``python -m hashview`` runs the same entry point as the ``hashview`` command."""

from hashview.cli import main

raise SystemExit(main())
