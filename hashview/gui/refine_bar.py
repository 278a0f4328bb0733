"""Refining a search in the results panel: the marks' summary, Search again, filters, crop.

"Search again" searches with one code: the majority of the query and the hits marked good,
pushed from those marked bad (:mod:`hashview.search.refine`). The filters keep only hits with a
label, from a slide, from a patient's slides, or from the slides whose case data meet the Where
conditions (``stain=HE site=colon``); changing one re-runs the search. A Where condition the
library cannot answer (an unknown key) is one line in the bar and is not applied.
"""

from __future__ import annotations

from typing import Optional, Sequence

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QVBoxLayout, QWidget)

from hashview.errors import HashViewError
from hashview.gui.case_filter import sources_matching, split_filter
from hashview.gui.library_panel import problem_note

ANY = "Any"
UNLABELLED = "(unlabelled)"


class RefineBar(QWidget):
    searchAgainRequested = Signal()
    clearMarksRequested = Signal()
    cropRequested = Signal()
    filtersChanged = Signal()

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.summary = QLabel("Mark hits good (G) or bad (B), then Search again")
        self.summary.setStyleSheet("color: #505050;")
        self.search_again = QPushButton("Search again")
        self.search_again.setToolTip("Search with the query and the hits marked good, pushed "
                                     "away from those marked bad (Ctrl+Return)")
        self.search_again.setShortcut("Ctrl+Return")
        self.clear_marks = QPushButton("Clear marks")
        self.crop = QPushButton("Crop query…")
        self.crop.setToolTip("Search with only part of the query: the part that matters")
        self.label = self._combo("Keep hits with this label")
        self.slide = self._combo("Keep hits from this slide or image")
        self.patient = self._combo("Keep hits from this patient's slides")
        self.where = QLineEdit()
        self.where.setPlaceholderText("stain=HE site=colon")
        self.where.setToolTip("Keep hits from the slides whose case data have these values "
                              "(key=value, all of them; Return applies)")
        self.where.setClearButtonEnabled(True)
        self.where_note = problem_note()
        self._where_applied = ""  # the Where text the last filtersChanged used
        self._where_ids: Optional[frozenset] = None
        self._library_path: Optional[str] = None
        self._sources: list = []
        marks_row = QHBoxLayout()
        marks_row.addWidget(self.summary, 1)
        for button in (self.search_again, self.clear_marks, self.crop):
            marks_row.addWidget(button)
        filter_row = QHBoxLayout()
        self.patient_label = QLabel("Patient")
        for text, combo in (("Label", self.label), ("Slide", self.slide),
                            (self.patient_label, self.patient)):
            filter_row.addWidget(QLabel(text) if isinstance(text, str) else text)
            filter_row.addWidget(combo, 1)
        where_row = QHBoxLayout()
        where_row.addWidget(QLabel("Where"))
        where_row.addWidget(self.where, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(marks_row)
        layout.addLayout(filter_row)
        layout.addLayout(where_row)
        layout.addWidget(self.where_note)
        self.where.editingFinished.connect(self._on_where_edited)
        self.search_again.clicked.connect(self.searchAgainRequested)
        self.clear_marks.clicked.connect(self.clearMarksRequested)
        self.crop.clicked.connect(self.cropRequested)
        self.set_marks(0, 0)

    def _combo(self, tip: str) -> QComboBox:
        combo = QComboBox()
        combo.setToolTip(tip)
        combo.setMinimumContentsLength(8)
        combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.currentIndexChanged.connect(lambda *_: self.filtersChanged.emit())
        return combo

    # ------------------------------------------------------------------ marks
    def set_marks(self, good: int, bad: int, enabled: bool = True) -> None:
        if not enabled:
            self.summary.setText("Marks refine tile and region searches, not whole-slide ones")
        elif good or bad:
            self.summary.setText(f"Marked {good} good, {bad} bad: Search again (Ctrl+Return)")
        else:
            self.summary.setText("Mark hits good (G) or bad (B), then Search again")
        self.search_again.setEnabled(enabled and bool(good or bad))
        self.clear_marks.setEnabled(bool(good or bad))

    # ------------------------------------------------------------------ filters
    def set_library(self, labels: Sequence[str], sources: Sequence,
                    library_path: Optional[str] = None) -> None:
        """The choices of the open library (``sources``: its ``SourceRecord``s), keeping a
        choice the new list still has; re-runs nothing."""
        self._sources = list(sources)
        self._library_path = library_path
        self._find_where()  # source ids change when sources are removed
        patients = sorted({s.patient_id for s in self._sources if s.patient_id})
        for combo, items in ((self.label, [*labels, UNLABELLED]),
                             (self.slide, [s.name for s in self._sources]),
                             (self.patient, patients)):
            chosen = combo.currentText()  # kept when the same library is reloaded
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(ANY)
            combo.addItems([str(i) for i in items])
            combo.setCurrentIndex(max(0, combo.findText(chosen)))
            combo.blockSignals(False)
        self.patient.setVisible(bool(patients))  # a library without patient ids: no choice
        self.patient_label.setVisible(bool(patients))

    def filters(self) -> tuple[Optional[frozenset], Optional[frozenset], str]:
        """(labels, source ids, words) of the chosen filters; None where any goes."""
        labels = sources = None
        words = []
        if self.label.currentIndex() > 0:
            text = self.label.currentText()
            labels = frozenset({None if text == UNLABELLED else text})
            words.append(f"label {text}")
        if self.slide.currentIndex() > 0:
            record = self._sources[self.slide.currentIndex() - 1]
            sources = frozenset({record.id})
            words.append(f"slide {record.name}")
        if self.patient.currentIndex() > 0:
            patient = self.patient.currentText()
            ids = frozenset(s.id for s in self._sources if s.patient_id == patient)
            sources = ids if sources is None else sources & ids
            words.append(f"patient {patient}")
        if self._where_ids is not None:
            ids = self._where_ids
            sources = ids if sources is None else sources & ids
            words.append(f"where {self._where_applied}")
        elif self.where_problem():  # said with the results too: these hits are not filtered
            words.append("Where not applied")
        return labels, sources, ", ".join(words)

    # ------------------------------------------------------------------ where
    def where_problem(self) -> str:
        """Why the Where conditions are not applied ("" when they are, or there are none)."""
        return self.where_note.text()

    def _on_where_edited(self) -> None:
        if self.where.text().strip() == self._where_applied:
            return  # Return again or focus leaving: nothing new
        if self._find_where():
            self.filtersChanged.emit()

    def _find_where(self) -> bool:
        """The ids of the sources meeting the Where text; False (and one line in the bar) when
        it cannot be answered."""
        text = self.where.text().strip()
        problem, ids = "", None
        try:
            conditions, words = split_filter(text)
            if words:
                raise ValueError(f"a condition is KEY=VALUE (e.g. stain=HE), got {words[0]!r}")
            if conditions and self._library_path:
                ids = frozenset(sources_matching(self._library_path, conditions))
        except (ValueError, HashViewError) as exc:
            problem = getattr(exc, "reason", None) or str(exc)  # the bar's library: no path
        self.where_note.setText(f"Where not applied: {problem}" if problem else "")
        self.where_note.setVisible(bool(problem))
        self.where.setStyleSheet("background: #fbe3e3;" if problem else "")
        self._where_applied, self._where_ids = (text, ids) if not problem else ("", None)
        return not problem
