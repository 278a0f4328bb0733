"""Dialogs: train a model, settings, about."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox,
                               QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QMessageBox, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from hashview import __version__
from hashview.gui.settings import AppSettings

DEVICES = {"auto": "Automatic (GPU when available)", "cuda": "GPU (CUDA)", "cpu": "CPU"}


def runs_dir() -> Path:
    """Where training jobs keep their checkpoints; the finished model is installed next to the
    user's models (see :func:`hashview.models.install_model`)."""
    from hashview.models import user_models_dir

    return user_models_dir() / "runs"


SCRATCH = "__scratch__"  # the "start from" choice of random weights
# What training reads: placeholder of the folder field, per input kind.
TRAIN_INPUTS = {
    "patches": ("A folder of labelled patches",
                "Folder of labelled patches (class subfolders or labels.csv)"),
    "slides": ("Slides with QuPath annotations",
               "Folder of slides, each with its QuPath export SLIDE.geojson beside it"),
}


class TrainDialog(QDialog):
    """Patch folder and a plain choice -> ``job_args()`` for a "train" JobSpec.

    The first choice, and the default, fine-tunes the recommended model (the default search
    model) on the user's labelled patches; the architectures (named after their papers), code
    length, epochs and start are under "Advanced".
    """

    def __init__(self, parent: Optional[QWidget] = None, device: str = "auto",
                 folder: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Train a hashing model")
        self.device = device
        self.folder = QLineEdit(folder)
        self.input_kind = QComboBox()
        for key, (text, _) in TRAIN_INPUTS.items():
            self.input_kind.addItem(text, key)
        self.input_kind.setToolTip("Annotated slides: each tile a class covers at least half "
                                   "of is a training patch of that class; each slide is one "
                                   "patient")
        self.input_kind.currentIndexChanged.connect(self._update_input_hint)
        self._update_input_hint()
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(browse)
        from hashview.models import DEFAULT_MODEL
        from hashview.training.objectives import trainable_architectures

        self.recommended = DEFAULT_MODEL
        self.plan = QComboBox()
        self.plan.addItem(f"Fine-tune the recommended model ({DEFAULT_MODEL}) on my labelled "
                          "patches", "recommended")
        self.plan.addItem("Advanced: choose the architecture, code length and start",
                          "advanced")
        self.arch = QComboBox()
        for key, text in trainable_architectures().items():  # every arch with an objective
            self.arch.addItem(text, key)
        self.bits = QSpinBox()
        self.bits.setRange(8, 512)
        self.bits.setSingleStep(8)
        self.bits.setValue(64)
        self.bits.setSuffix(" bits")
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 1000)
        self.epochs.setSpecialValueText("The start model's recipe")  # 0: its epochs (or 30)
        self.epochs.setValue(0)
        self.name = QLineEdit()
        # Fine-tuning: any installed model of the chosen arch and code length can be the start.
        self.start_from = QComboBox()
        self.start_from.setToolTip("Start from a trained model's weights (fine-tune it on your "
                                   "patches) or from random weights")
        # From a start only the hash layer is refitted (seconds) unless every layer is asked
        # for; from random weights the whole network trains anyway.
        self.whole_network = QCheckBox("Train every layer (slower; by default only the hash "
                                       "layer is refitted)")
        self.start_from.currentIndexChanged.connect(
            lambda *_: self.whole_network.setEnabled(self.start_from.currentData() != SCRATCH))
        for signal in (self.folder.textChanged, self.arch.currentIndexChanged,
                       self.bits.valueChanged):
            signal.connect(self._update_name_hint)
        self._installed = None  # model cards, read once when the choices are first filled
        for signal in (self.arch.currentIndexChanged, self.bits.valueChanged):
            signal.connect(self._update_start_choices)
        self._update_start_choices()
        self.plan.currentIndexChanged.connect(self._apply_plan)
        note = QLabel("Training runs in the background (Jobs panel); on a CPU refitting the "
                      "hash layer takes a minute or so, training every layer minutes to hours. "
                      "A part of your patches is held out: when done, the "
                      "new model's score on it is shown next to the model it started from, "
                      "and the model appears in Settings ▸ Model.")
        note.setWordWrap(True)
        note.setStyleSheet("color: #555;")
        self._update_name_hint()

        form = QFormLayout()
        form.addRow("Train on", self.input_kind)
        form.addRow("Folder", folder_row)
        form.addRow("Train", self.plan)
        form.addRow("Model name", self.name)
        self.advanced = QWidget()  # shown for the "advanced" plan only
        advanced_form = QFormLayout(self.advanced)
        advanced_form.setContentsMargins(0, 0, 0, 0)
        advanced_form.addRow("Architecture", self.arch)
        advanced_form.addRow("Code length", self.bits)
        advanced_form.addRow("Epochs", self.epochs)
        advanced_form.addRow("Start from", self.start_from)
        advanced_form.addRow("", self.whole_network)
        form.addRow(self.advanced)
        self._apply_plan()
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Start training")
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.buttons)
        self.resize(560, self.sizeHint().height())

    def _apply_plan(self, *_args) -> None:
        """The recommended plan: the default model's architecture and code length, started
        from it with its recipe; the advanced plan leaves every choice to the user."""
        advanced = self.plan.currentData() == "advanced"
        self.advanced.setVisible(advanced)
        if not advanced:
            from hashview.models import list_models

            card = next((c for c in self._installed or list_models()
                         if c.name == self.recommended), None)
            if card is not None:
                self.arch.setCurrentIndex(max(0, self.arch.findData(card.arch)))
                self.bits.setValue(card.bits)
            self.epochs.setValue(0)
            self.start_from.setCurrentIndex(max(0, self.start_from.findData(self.recommended)))
        self.adjustSize()

    def _update_name_hint(self, *_args) -> None:
        self.name.setPlaceholderText(f"{self.default_model_name()} (default)")

    def _update_start_choices(self, *_args) -> None:
        from hashview.models import list_models

        if self._installed is None:
            self._installed = list_models()
        arch = self.arch.currentData()
        from hashview.training.defaults import DEFAULT_START

        self.start_from.clear()
        default = DEFAULT_START.get(arch)
        if default:  # first, so that it is what a user who changes nothing gets
            self.start_from.addItem(f"{default} (the default start)", default)
        self.start_from.addItem("Random weights (train from scratch)", SCRATCH)
        for card in self._installed:  # any code length: the hash layer then starts fresh
            if card.arch == arch and card.trained and card.name != default:
                self.start_from.addItem(f"{card.name} (fine-tune it)", card.name)

    def _update_input_hint(self, *_args) -> None:
        self.folder.setPlaceholderText(TRAIN_INPUTS[self.input_kind.currentData()][1])

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def default_model_name(self) -> str:
        from hashview.training.config import default_model_name

        folder = Path(self.folder.text().strip()).name or "patches"
        return default_model_name(self.arch.currentData(), self.bits.value(), folder)

    def model_name(self) -> str:
        from hashview.models.card_limits import plain_name  # what a model card accepts

        typed = self.name.text().strip()
        return plain_name(typed) if typed else self.default_model_name()

    def job_args(self) -> dict:
        """Keyword arguments of ``hashview.training.train_from_folder``; for annotated slides,
        with ``annotations`` (the files beside each slide), as the train job takes them."""
        name = self.model_name()
        args = {"data_folder": str(Path(self.folder.text().strip()).resolve()),
                "arch": self.arch.currentData(), "bits": self.bits.value(),
                "out_dir": str(runs_dir() / name),
                "name": name, "device": self.device}
        if self.input_kind.currentData() == "slides":
            args["annotations"] = {"where": None}
        if self.epochs.value():
            args["epochs"] = self.epochs.value()
        from hashview.training.defaults import DEFAULT_START

        start = self.start_from.currentData()
        if start == SCRATCH:
            args["from_scratch"] = True
        else:
            if start and start != DEFAULT_START.get(args["arch"]):  # the default needs none
                args["init_from"] = start
            if self.whole_network.isChecked():
                args["method"] = "network"
        return args

    def _accept(self) -> None:
        folder = Path(self.folder.text().strip())
        slides = self.input_kind.currentData() == "slides"
        if not self.folder.text().strip() or not folder.is_dir():
            what = "slides" if slides else "labelled patches"
            QMessageBox.warning(self, "Train a hashing model", f"{folder}: not a folder of {what}")
            return
        if slides and not any(folder.rglob("*.geojson")):
            QMessageBox.warning(self, "Train a hashing model",
                                f"{folder}: no QuPath annotations (SLIDE.geojson) in it")
            return
        self.accept()


LIBRARY_FILTER = "HashView libraries (*.h5 *.hdf5)"
TILING_HINT = ("A library keeps the model and tiling it was made with. \"The model's\" tiling "
               "is the one the model was trained at; 0.5 µm/px is about 20x.")


def library_choice_widgets(settings: AppSettings) -> tuple[QComboBox, QSpinBox, QDoubleSpinBox]:
    """The model and tiling of a new library, preset from ``settings``: (model, tile size,
    resolution); 0 shows as "the model's" (a trained model knows the tiling it was trained at)."""
    from hashview.models import DEFAULT_MODEL, list_models

    model = QComboBox()
    for card in list_models():
        state = ", ".join(["trained" if card.trained else "untrained", *card.warnings()])
        model.addItem(f"{card.name}  ({card.arch}, {card.bits} bits, {state})", card.name)
    model.setCurrentIndex(max(0, model.findData(settings.model or DEFAULT_MODEL)))
    tile_size = QSpinBox()
    tile_size.setRange(0, 2048)
    tile_size.setSuffix(" px")
    tile_size.setSpecialValueText("The model's")
    tile_size.setValue(settings.tile_size)
    target_mpp = QDoubleSpinBox()
    target_mpp.setRange(0.0, 16.0)
    target_mpp.setDecimals(3)
    target_mpp.setSingleStep(0.25)
    target_mpp.setSuffix(" µm/px")
    target_mpp.setSpecialValueText("The model's")
    target_mpp.setValue(settings.target_mpp)
    return model, tile_size, target_mpp


def _finish_form(dialog: QDialog, form: QFormLayout) -> None:
    """The form, the tiling hint and OK / Cancel."""
    hint = QLabel(TILING_HINT)
    hint.setWordWrap(True)
    hint.setStyleSheet("color: palette(dark);")
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                               | QDialogButtonBox.StandardButton.Cancel)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    layout = QVBoxLayout(dialog)
    layout.addLayout(form)
    layout.addWidget(hint)
    layout.addWidget(buttons)


class NewLibraryDialog(QDialog):
    """File ▸ New library: where, with which model and tiling (preset from Settings)."""

    def __init__(self, settings: AppSettings, parent: Optional[QWidget] = None,
                 path: str = "library.h5"):
        super().__init__(parent)
        self.setWindowTitle("New library")
        self._folder = str(Path(path).parent)
        self.path = QLineEdit(path)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        where = QHBoxLayout()
        where.addWidget(self.path, 1)
        where.addWidget(browse)
        self.model, self.tile_size, self.target_mpp = library_choice_widgets(settings)
        self.stain = QLineEdit()
        self.stain.setPlaceholderText("none: tiles keep their colours")
        self.stain.setToolTip("Re-stain every tile, and every query, to this H&E reference "
                              "image: helps when slides come from several labs "
                              "(see docs/benchmarks.md)")
        pick_stain = QPushButton("Choose…")
        pick_stain.clicked.connect(self._choose_stain)
        stain = QHBoxLayout()
        stain.addWidget(self.stain, 1)
        stain.addWidget(pick_stain)
        form = QFormLayout()
        form.addRow("File", where)
        form.addRow("Model", self.model)
        form.addRow("Tile size", self.tile_size)
        form.addRow("Target resolution", self.target_mpp)
        form.addRow("Stain-normalise to", stain)
        _finish_form(self, form)
        self.resize(560, self.sizeHint().height())

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "New library", self.path.text(),
                                              LIBRARY_FILTER)
        if path:
            self.path.setText(path)

    def _choose_stain(self) -> None:
        from hashview.gui.library_edits import SLIDE_FILTER

        path, _ = QFileDialog.getOpenFileName(self, "Stain reference", self._folder,
                                              SLIDE_FILTER)
        if path:
            self.stain.setText(path)

    def choice(self) -> dict:
        """``path``, ``model``, ``tile_size``, ``target_mpp`` (0: the model's) and
        ``stain_reference`` (an image to normalise tiles to; "" for none)."""
        path = self.path.text().strip()
        if path and not path.lower().endswith((".h5", ".hdf5")):
            path += ".h5"
        if path and not Path(path).expanduser().is_absolute():  # not the app's working folder
            path = str(Path(self._folder) / path)
        return {"path": str(Path(path).expanduser()) if path else "",
                "model": self.model.currentData(),
                "tile_size": self.tile_size.value(), "target_mpp": self.target_mpp.value(),
                "stain_reference": self.stain.text().strip()}


class SettingsDialog(QDialog):
    """Device, model for new libraries, tiling of new libraries, top-k, viewer cache."""

    def __init__(self, settings: AppSettings, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        self.device = QComboBox()
        for key, text in DEVICES.items():
            self.device.addItem(text, key)
        self.device.setCurrentIndex(max(0, self.device.findData(settings.device)))
        self.model, self.tile_size, self.target_mpp = library_choice_widgets(settings)
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 500)
        self.top_k.setValue(settings.top_k)
        self.cache_mb = QSpinBox()
        self.cache_mb.setRange(32, 16384)
        self.cache_mb.setSingleStep(64)
        self.cache_mb.setSuffix(" MB")
        self.cache_mb.setValue(settings.cache_mb)
        self._engine_widgets(settings)

        form = QFormLayout()
        form.addRow("Device", self.device)
        form.addRow("Model (new libraries)", self.model)
        form.addRow("Tile size (new libraries)", self.tile_size)
        form.addRow("Target resolution", self.target_mpp)
        form.addRow("Hits per search (top-k)", self.top_k)
        form.addRow("Viewer tile cache", self.cache_mb)
        form.addRow("Indexing runs on", self.engine)
        form.addRow("Ray cluster address", self.ray_address)
        form.addRow("Ray encoding workers", self.ray_workers)
        _finish_form(self, form)

    def _engine_widgets(self, settings: AppSettings) -> None:
        """This computer, or a Ray cluster (greyed out, with the install line, without Ray)."""
        from hashview.cluster import ray_installed

        self.engine = QComboBox()
        self.engine.addItem("This computer", "local")
        self.engine.addItem("A Ray cluster", "ray")
        if not ray_installed():
            self.engine.model().item(1).setEnabled(False)
            self.engine.setItemData(1, "Needs Ray: pip install 'hashview[cluster]'",
                                    Qt.ItemDataRole.ToolTipRole)
        chosen = self.engine.findData(settings.index_engine)
        self.engine.setCurrentIndex(chosen if chosen == 1 and ray_installed() else 0)
        self.ray_address = QLineEdit(settings.ray_address)
        self.ray_address.setPlaceholderText("empty: a local Ray on this computer; auto; HOST:PORT")
        self.ray_address.setMinimumWidth(360)  # the placeholder says what each form means
        self.ray_workers = QSpinBox()
        self.ray_workers.setRange(1, 4096)
        self.ray_workers.setValue(max(1, settings.ray_workers))

        def follow(_index: int = 0) -> None:
            on_ray = self.engine.currentData() == "ray"
            self.ray_address.setEnabled(on_ray)
            self.ray_workers.setEnabled(on_ray)

        self.engine.currentIndexChanged.connect(follow)
        follow()

    def apply(self) -> None:
        s = self.settings
        s.device = self.device.currentData()
        s.model = self.model.currentData() or ""
        s.tile_size = self.tile_size.value()
        s.target_mpp = self.target_mpp.value()
        s.top_k = self.top_k.value()
        s.cache_mb = self.cache_mb.value()
        s.index_engine = self.engine.currentData()
        s.ray_address = self.ray_address.text().strip()
        s.ray_workers = self.ray_workers.value()
        s.sync()


CREDITS_HTML = """
<p><b>Methods.</b> HATDH: Alizadeh, Helfroush &amp; Celebi, <i>An innovative attention-based
triplet deep hashing approach to retrieve histopathology images</i>, J Imaging Inform Med 2024.
DCH: Sapkota, Shi, Xing &amp; Yang, <i>Deep convolutional hashing for low dimensional binary
embedding of histopathological images</i>, IEEE JBHI 2018.</p>
<p><b>Sample data.</b> CMU-1-Small-Region.svs: OpenSlide test data, CC0 1.0.
Colorectal tissue tiles: Kather JN et al., <i>Multi-class texture analysis in colorectal cancer
histology</i>, Sci Rep 6:27988 (2016), doi:10.5281/zenodo.53169, CC-BY 4.0.
tiny-16px.svs: OpenSlide test data (LGPL-2.1). kidney-48-5-striped.tif: Image Data Resource,
idr0073.</p>
<p><b>Licences.</b> HashView: MIT. Qt for Python (PySide6): LGPL-3.0. OpenSlide: LGPL-2.1.
PyTorch: BSD-3-Clause. FAISS: MIT. NumPy, h5py: BSD. Pillow: MIT-CMU (HPND).</p>
"""


def about_html(model_card=None) -> str:
    if model_card is None:
        model = "no library open"
    else:
        state = ("trained" if model_card.trained
                 else "<b>untrained</b> (seeded initial weights: similarity is colour and "
                      "coarse texture, not learned)")
        model = f"{model_card.name} ({model_card.arch}, {model_card.bits} bits), {state}"
    return (f"<h3>HashView {__version__}</h3>"
            "<p>Content-based search of histopathology images with deep hashing. "
            "Everything runs locally: no slide or image leaves this computer.</p>"
            f"<p><b>Model of the open library:</b> {model}</p>" + CREDITS_HTML)


def show_about(parent: Optional[QWidget], model_card=None) -> None:
    box = QMessageBox(parent)
    box.setWindowTitle("About HashView")
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(about_html(model_card))
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.exec()
