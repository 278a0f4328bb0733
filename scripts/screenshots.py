"""Screenshots of the app's main states -> docs/screenshots/*.jpg (JPEG: 4x smaller than PNG).

    xvfb-run -a python scripts/screenshots.py      (or QT_QPA_PLATFORM=offscreen python ...)

Uses a throw-away HASHVIEW_HOME (demo library, settings), so the user's own are untouched.
States: the demo slide open; results after "Find similar region"; a hit opened in the second
viewer; the train dialog.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HASHVIEW_HOME", tempfile.mkdtemp(prefix="hashview-shots-"))


def _xcb_loads() -> bool:
    """Whether Qt's xcb platform plugin and its libraries load (in a child: a failed load
    must not leave half a Qt in this process)."""
    import subprocess

    import PySide6

    plugin = Path(PySide6.__file__).parent / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    probe = subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])",
                            str(plugin)], capture_output=True)
    return plugin.is_file() and probe.returncode == 0


def _pick_platform() -> None:
    """Offscreen without a display, and also under Xvfb when Qt's xcb plugin cannot load (it
    needs libxcb-cursor0, -icccm4, -keysyms1...): Qt would abort rather than fall back."""
    if "QT_QPA_PLATFORM" in os.environ:
        return
    if not os.environ.get("DISPLAY") or not _xcb_loads():
        print("using Qt's offscreen platform", file=sys.stderr)
        os.environ["QT_QPA_PLATFORM"] = "offscreen"


_pick_platform()


def wait_until(app, condition, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(5):  # let pending repaints land
        app.processEvents()
        time.sleep(0.02)


def settle(app, viewers, seconds: float = 0.4) -> None:
    """Until the viewers have read what they show, then a little more for repaints."""
    wait_until(app, lambda: not any(v.is_loading() for v in viewers), 30, "slide tiles")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def save(widget, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.jpg"
    widget.grab().save(str(path), "JPG", 88)
    print(path)
    return path


def main() -> int:
    from hashview.demo import DEMO_SLIDE
    from hashview.gui.app import create_app, open_demo
    from hashview.gui.dialogs import TrainDialog
    from hashview.gui.main_window import MainWindow

    app = create_app()
    window = MainWindow()
    window.resize(1500, 900)
    window.show()
    builder = open_demo(window)
    wait_until(app, lambda: window.library_path is not None, 180, "the demo library")
    builder.wait()
    wait_until(app, lambda: window.controller.loaded_library is not None, 60, "the model")
    panel = window.library_panel
    wait_until(app, lambda: panel.model.thumbnails_loaded() >= min(12, len(panel.records())),
               30, "library thumbnails")
    window.set_outlines_visible(True)
    window.actions_.outlines.setChecked(True)
    settle(app, [window.viewer])
    save(window, "01-demo-slide")

    # Right-click "Find similar region" on tissue near the slide's centre, other sources only
    # ("Exclude this slide"): the labelled reference patches answer, and their vote means something.
    window.results.exclude.setChecked(True)
    width, height = window.source.dimensions
    side = window.viewer.query_tile_side()
    window.viewer.find_similar_at(window.viewer.map_from_level0(width * 0.42, height * 0.45))
    wait_until(app, lambda: window.results.outcome is not None, 60, "search results")
    results = window.results
    wait_until(app, lambda: results.thumbnails_loaded() >= len({h.tile_index
                                                                 for h in results.hits()}),
               30, "hit thumbnails")
    settle(app, [window.viewer])
    save(window, "02-find-similar-results")

    # The same search over the whole library; a hit in the slide, away from its edges, opened
    # beside the query at 20x.
    first = results.outcome
    results.exclude.setChecked(False)  # re-runs the search
    wait_until(app, lambda: results.outcome is not first, 60, "the search without exclusion")
    hits = results.hits()
    inside = [h for h in hits if h.source_path == str(DEMO_SLIDE)
              and 2 * h.size < h.y < height - 3 * h.size and 2 * h.size < h.x < width - 3 * h.size]
    hit = (inside or hits)[0]
    x, y, w, h = window.controller.last_request.region
    window.viewer.center_on(x + w / 2, y + h / 2, 1.0)
    window.show_hit(hit)
    settle(app, [window.viewer, window.compare_viewer])
    save(window, "03-hit-in-second-viewer")

    dialog = TrainDialog(window, folder=str(DEMO_SLIDE.parent / "patches"))
    dialog.arch.setCurrentIndex(dialog.arch.findData("mth"))
    dialog.bits.setValue(64)  # fine-tune the default model on the demo patches
    dialog.start_from.setCurrentIndex(dialog.start_from.findData("mth-64-from-idc"))
    dialog.show()
    wait_until(app, lambda: dialog.isVisible(), 5, "the train dialog")
    save(dialog, "04-train-dialog")
    dialog.close()
    window.close()
    print(f"side {side}, {len(hits)} hits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
