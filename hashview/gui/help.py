"""Help ▸ Keyboard shortcuts and Help ▸ Getting started.

The shortcut sheet is built when it is shown, from the window's menus (each QAction's text and
shortcuts), any other QAction of the window that has a shortcut, and the slide viewer's key
table: adding or changing a shortcut changes the sheet, so it cannot drift from the app.
"""

from __future__ import annotations

import html

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

from hashview.gui.viewer.interaction import MOUSE_GESTURES, VIEWER_KEYS

Rows = list[tuple[str, str]]          # (keys as shown, what they do)
NATIVE = QKeySequence.SequenceFormat.NativeText
PORTABLE = QKeySequence.SequenceFormat.PortableText


def plain_text(text: str) -> str:
    """A menu text without its mnemonic marks and trailing ellipsis."""
    return text.replace("&&", "\0").replace("&", "").replace("\0", "&").rstrip(".…").strip()


def shortcut_text(action: QAction) -> str:
    return " or ".join(seq.toString(NATIVE) for seq in action.shortcuts() if not seq.isEmpty())


def shortcut_sections(window) -> list[tuple[str, Rows]]:
    """``[(section title, rows)]``: one section per menu, then the viewer's keys, the mouse."""
    sections: list[tuple[str, Rows]] = []
    listed: set[int] = set()
    taken: set[str] = set()   # portable key texts already listed by an action

    def walk(menu, path: list[str], rows: Rows) -> None:
        for action in menu.actions():
            if action.menu() is not None:
                walk(action.menu(), path + [plain_text(action.text())], rows)
            elif shortcut_text(action):
                rows.append((shortcut_text(action),
                             " ▸ ".join(path + [plain_text(action.text())])))
                listed.add(id(action))
                taken.update(seq.toString(PORTABLE) for seq in action.shortcuts())

    for top in window.menuBar().actions():
        if top.menu() is not None:
            rows: Rows = []
            walk(top.menu(), [], rows)
            if rows:
                sections.append((plain_text(top.text()), rows))
    others = [a for a in window.findChildren(QAction)
              if id(a) not in listed and shortcut_text(a)]
    if others:
        sections.append(("Window", [(shortcut_text(a), plain_text(a.text())) for a in others]))
    viewer_rows = [(entry.label, entry.description) for entry in VIEWER_KEYS
                   if entry.label not in taken]
    sections.append(("Slide viewer (click the slide first)", viewer_rows))
    sections.append(("Mouse, on the slide", list(MOUSE_GESTURES)))
    return sections


def shortcuts_html(window) -> str:
    parts = ["<h2>Keyboard shortcuts</h2>"]
    for title, rows in shortcut_sections(window):
        parts.append(f"<h3>{html.escape(title)}</h3><table cellspacing='0' cellpadding='3'>")
        for keys, what in rows:
            parts.append(f"<tr><td width='150'><b>{html.escape(keys)}</b></td>"
                         f"<td>{html.escape(what)}</td></tr>")
        parts.append("</table>")
    return "".join(parts)


def getting_started_html(actions) -> str:
    """Four steps; the shortcuts are read from ``actions`` (the window's), not written here."""
    def key(action: QAction) -> str:
        text = shortcut_text(action)
        return f" ({html.escape(text)})" if text else ""

    return f"""
<h2>Getting started</h2>
<ol>
<li><p><b>Open a slide.</b> File ▸ Open slide{key(actions.open_slide)}, or drop a slide on the
window. Scroll to zoom, drag to pan; keys 1 to 5 jump to 1x, 5x, 10x, 20x and 40x, M measures
in µm, and View ▸ Adjust display{key(actions.adjust_display)} changes brightness, contrast and
gamma.</p></li>
<li><p><b>Find a similar region.</b> Right-click the tissue ▸ <i>Find similar region</i>, or
press R and drag a rectangle, then Enter. The most similar tiles of the open library appear on
the right; click one to open its slide beside yours. You can also drop or paste a patch
image{key(actions.paste)}.</p></li>
<li><p><b>Build a library.</b> File ▸ New library… creates one with the model chosen in
Settings; File ▸ Add folder to library… (or Add current slide) indexes slides and patches as a
background job in the Jobs panel while you keep working. T outlines the indexed tiles on the
open slide.</p></li>
<li><p><b>Check the votes on your tissue.</b> With labels in the library (patch sub-folders,
a labels.csv or QuPath annotations), Search ▸ Check library on its labels says how often the
top-10 vote names the right label when each patient's tiles are held out, against chance; a
model that serves your tissue badly is called WEAK or NEAR CHANCE, and every vote then says so.
Search ▸ Compare models on its labels finds the model that serves it best.</p></li>
<li><p><b>Train a model.</b> Search ▸ Train model… learns from a folder of labelled patches
(one sub-folder per class, or a labels.csv); build a new library with the trained model to
search by what it learned. Search ▸ Install model… adds a model trained elsewhere (its
.safetensors file), e.g. the one a library you were given was made with.</p></li>
</ol>
<p>Help ▸ Keyboard shortcuts{key(actions.shortcuts)} lists every key.</p>
"""


class HelpWindow(QDialog):
    """A non-modal window showing one help page (rich text)."""

    def __init__(self, title: str, page_html: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setModal(False)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        self.browser.setHtml(page_html)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)
        self.resize(560, 720)

    def set_page(self, page_html: str) -> None:
        self.browser.setHtml(page_html)
