"""The main window's actions and menus (kept apart from the window's behaviour)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from PySide6.QtGui import QAction, QKeySequence

from hashview.gui.viewer.zoom import MAGNIFICATION_PRESETS


def _action(window, text: str, slot=None, shortcut=None, tip: str = "",
            checkable: bool = False) -> QAction:
    action = QAction(text, window)
    if shortcut is not None:
        action.setShortcut(QKeySequence(shortcut))
    if tip:
        action.setStatusTip(tip)
        action.setToolTip(tip)
    action.setCheckable(checkable)
    if slot is not None:
        (action.toggled if checkable else action.triggered).connect(
            slot if checkable else (lambda _checked=False: slot()))
    return action


def build_menus(window) -> SimpleNamespace:
    """Create every action of ``window`` (a MainWindow), put them in its menu bar, return them."""
    w, K = window, QKeySequence.StandardKey
    a = SimpleNamespace()
    a.open_slide = _action(w, "Open &slide…", w.ask_open_slide, K.Open,
                           "Open a whole-slide image or a plain image")
    a.open_folder = _action(w, "Open &folder…", w.ask_open_folder,
                            tip="Add a folder of slides or patches to the library")
    a.open_library = _action(w, "Open &library…", w.ask_open_library, "Ctrl+Shift+O",
                             "Open a HashView library (.h5)")
    a.new_library = _action(w, "&New library…", w.ask_new_library,
                            tip="Create an empty library with the model chosen in Settings")
    a.add_slide = _action(w, "Add current &slide to library", w.add_current_slide_to_library,
                          tip="Index the open slide into the library (background job)")
    a.add_folder = _action(w, "Add f&older to library…", w.ask_add_folder_to_library,
                           tip="Index every slide and patch in a folder (background job)")
    a.import_cases = _action(w, "Import case &data (CSV)…", w.edits.ask_import_case_data,
                             tip="Patient ids, labels and case columns (stain, site…) for the "
                                 "library's slides from a CSV, one row per slide")
    a.quit = _action(w, "&Quit", w.close, K.Quit)
    a.quit.setShortcut(QKeySequence("Ctrl+Q"))  # StandardKey.Quit is empty on some platforms

    a.outlines = _action(w, "Show &tile outlines", w.show_tile_outlines, "T",
                         "Outline the library's tiles on the open slide", checkable=True)
    a.similarity = _action(w, "Similarity &map", w.toggle_similarity_map, "H",
                           "Colour the open slide's tiles by their distance to the last query; "
                           "a click on the slide searches from there", checkable=True)
    a.zoom_in = _action(w, "Zoom &in", lambda: w.viewer.zoom_in(), K.ZoomIn)
    a.zoom_out = _action(w, "Zoom &out", lambda: w.viewer.zoom_out(), K.ZoomOut)
    a.fit = _action(w, "&Fit to window", lambda: w.viewer.fit(), "Ctrl+0")
    # plain digits as in the viewer's own keys; text fields still take them as typing
    a.magnifications = [
        _action(w, f"&{mag}x", (lambda m=mag: w.go_to_magnification(m)), str(number),
                f"Zoom to {mag}x ({10 / mag:g} µm per screen pixel)")
        for number, mag in enumerate(MAGNIFICATION_PRESETS, start=1)]
    a.ruler = _action(w, "&Measure (ruler)", w.toggle_ruler, "M",
                      "Drag on the slide to measure a length in µm; Esc clears it")
    a.adjust_display = _action(w, "&Adjust display…", w.ask_display_adjustment, "Shift+C",
                               "Brightness, contrast and gamma of what you see (not of what is "
                               "searched)")
    a.slide_scale = _action(w, "Set slide &scale…", w.ask_slide_scale,
                            tip="µm per pixel of a slide whose file does not record it")
    a.close_compare = _action(w, "Close &comparison", w.close_comparison)

    a.search_file = _action(w, "Search with image &file…", w.ask_search_files, K.Find,
                            "Search the library with one or more patch images")
    a.search_file.setShortcut(QKeySequence("Ctrl+F"))
    a.find_cases = _action(w, "Find similar &cases (whole slide)", w.find_similar_cases,
                           "Ctrl+Shift+F",
                           "Rank the library's slides against the open slide as a whole")
    a.export_qupath = _action(w, "Export hits to &QuPath…", w.export_hits_to_qupath,
                              tip="Write the shown query region and hits as GeoJSON, one file "
                                  "per slide, to drag onto the slide in QuPath")
    a.paste = _action(w, "&Paste image from clipboard", w.paste_from_clipboard, K.Paste,
                      "Search the library with the image on the clipboard")
    a.train = _action(w, "&Train model…", w.ask_train,
                      tip="Train a hashing model on a folder of labelled patches")
    a.check_library = _action(w, "&Check library on its labels", w.check_library_labels,
                              tip="How well the library's model tells the library's own labels "
                                  "apart, each patient's tiles held out (background job)")
    a.compare_models = _action(w, "C&ompare models on its labels",
                               lambda: w.check_library_labels(compare=True),
                               tip="Every trained model on the library's labelled tiles, read "
                                   "again from their files: which one tells them apart best "
                                   "(background job)")
    a.install_model = _action(w, "&Install model…", w.ask_install_model,
                              tip="Add a trained model file (NAME.safetensors with its NAME.json) "
                                  "to your models, e.g. one trained with hashview train")
    a.settings = _action(w, "S&ettings…", w.ask_settings, K.Preferences)
    a.about = _action(w, "&About HashView", w.show_about)
    a.shortcuts = _action(w, "&Keyboard shortcuts", w.show_shortcuts, "F1",
                          "Every key and mouse gesture of the app")
    a.shortcuts.setShortcuts([QKeySequence("F1"), QKeySequence("?")])
    a.getting_started = _action(w, "&Getting started", w.show_getting_started,
                                tip="Open a slide, find similar regions, build a library, train")

    bar = w.menuBar()
    file_menu = bar.addMenu("&File")
    for action in (a.open_slide, a.open_folder, a.open_library, a.new_library):
        file_menu.addAction(action)
    file_menu.addSeparator()
    file_menu.addAction(a.add_slide)
    file_menu.addAction(a.add_folder)
    file_menu.addAction(a.import_cases)
    file_menu.addSeparator()
    a.recent_menu = file_menu.addMenu("&Recent")
    a.recent_menu.aboutToShow.connect(lambda: fill_recent_menu(w, a.recent_menu))
    fill_recent_menu(w, a.recent_menu)
    file_menu.addSeparator()
    file_menu.addAction(a.quit)

    view_menu = bar.addMenu("&View")
    view_menu.addAction(a.outlines)
    view_menu.addAction(a.similarity)
    view_menu.addSeparator()
    for action in (a.zoom_in, a.zoom_out, a.fit):
        view_menu.addAction(action)
    a.magnification_menu = view_menu.addMenu("&Magnification")
    for action in a.magnifications:
        a.magnification_menu.addAction(action)
    view_menu.addAction(a.close_compare)
    view_menu.addSeparator()
    for action in (a.ruler, a.adjust_display, a.slide_scale):
        view_menu.addAction(action)
    view_menu.addSeparator()
    a.panels_menu = view_menu.addMenu("&Panels")
    for dock in w.docks:
        a.panels_menu.addAction(dock.toggleViewAction())

    search_menu = bar.addMenu("&Search")
    for action in (a.search_file, a.paste, a.find_cases, a.export_qupath):
        search_menu.addAction(action)
    search_menu.addSeparator()
    search_menu.addAction(a.train)
    search_menu.addAction(a.check_library)
    search_menu.addAction(a.compare_models)
    search_menu.addAction(a.install_model)
    search_menu.addSeparator()
    search_menu.addAction(a.settings)

    help_menu = bar.addMenu("&Help")
    for action in (a.getting_started, a.shortcuts):
        help_menu.addAction(action)
    help_menu.addSeparator()
    help_menu.addAction(a.about)
    return a


def recent_labels(paths: list[str]) -> list[str]:
    """Menu texts: the file name, its kind, and its folder when two entries share a name."""
    names = [Path(p).name for p in paths]
    labels = []
    for path, name in zip(paths, names):
        kind = "library" if path.endswith(".h5") else ("folder" if Path(path).is_dir() else "")
        text = name + (f"  ({kind})" if kind else "")
        if names.count(name) > 1:
            text += f"  — {Path(path).parent}"
        labels.append(text)
    return labels


def fill_recent_menu(window, menu) -> None:
    menu.clear()
    recent = window.settings.recent()
    for path, text in zip(recent, recent_labels(recent)):
        action = menu.addAction(text, lambda p=path: window.open_path(p))
        action.setToolTip(path)
        action.setStatusTip(path)
    if not recent:
        menu.addAction("(none)").setEnabled(False)
    else:
        menu.addSeparator()
        menu.addAction("Clear", window.settings.clear_recent)
