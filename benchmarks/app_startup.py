"""Start-up of the desktop app on a library: launch to window, to sources listed, to searchable.

Each run is a fresh process (imports included). Times from the process start (before importing
Qt or HashView):

- **window**: the main window shown;
- **listed**: the library opened and its sources listed in the Library panel;
- **searchable**: the search engine loaded (codes, tile table, index and model) in the
  background, i.e. a query can run; the status bar then shows the tile count and the index.

    xvfb-run -a python benchmarks/app_startup.py LIBRARY.h5 --runs 3

The 10^6-tile library of ``hashview bench --full --only region``
(``/tmp/hashview-bench/region/region-1000000.h5``) is the one docs/benchmarks.md reports.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one_run(library: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from PySide6.QtWidgets import QApplication

    from hashview.gui.app import create_app
    from hashview.gui.main_window import MainWindow

    app = create_app([])
    imported = time.perf_counter()
    window = MainWindow()
    window.show()
    QApplication.processEvents()
    shown = time.perf_counter()
    if not window.open_library(library):
        raise SystemExit(f"error: {library}: the app could not open it")
    listed = time.perf_counter()
    deadline = time.monotonic() + 300
    while window.controller.loaded_library is None and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.005)
    searchable = time.perf_counter()
    info = window.controller.loaded_library
    result = {"imports_s": imported - PROCESS_START, "window_s": shown - PROCESS_START,
              "listed_s": listed - PROCESS_START, "searchable_s": searchable - PROCESS_START,
              "tiles": info.n_tiles if info else None, "index": info.index if info else None,
              "status": window.status_tiles.text()}
    window.close()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", type=Path)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes, one run each")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.library.is_file():
        print(f"error: {args.library}: no such library", file=sys.stderr)
        return 2
    if args.one:
        print(json.dumps(one_run(args.library)))
        return 0
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, __file__, str(args.library), "--one"],
                             capture_output=True, text=True, check=False)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        print(lines[-1] if lines else out.stderr.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
