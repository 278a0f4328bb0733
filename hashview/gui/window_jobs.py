"""The main window's background jobs: adding to the library (indexing), training, and
checking the library's model on the library's own labels.

A mixin of :class:`hashview.gui.main_window.MainWindow`. Jobs run in worker processes through
the Jobs panel; the window only builds their :class:`hashview.jobs.JobSpec` and reacts when they
end (refresh the library, install a trained model).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox

from hashview.errors import HashViewError
from hashview.gui.dialogs import TrainDialog


class JobsMixin:
    def add_current_slide_to_library(self) -> None:
        if not self.source_path:
            self.warn("Open a slide first (File ▸ Open slide…)", "Add to library")
            return None
        return self.offer_to_add([self.source_path])  # asks first: a menu slip cannot be undone

    def ask_add_folder_to_library(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add folder to library")
        if folder:
            self.add_to_library([folder])

    def offer_to_add(self, paths: list[str]):
        """Ask, then index ``paths`` into the open library; the JobSpec, or None if declined."""
        what = Path(paths[0]).name if len(paths) == 1 else f"{len(paths)} items"
        target = Path(self.library_path).name if self.library_path else "a new library"
        answer = QMessageBox.question(
            self, "Add to library", f"Index {what} into {target}?\n\nIt runs in the background; "
            "the library view updates when it is done. A source can be removed again from the "
            "Library panel (right-click).")
        if answer == QMessageBox.StandardButton.Yes:
            return self.add_to_library(paths)
        return None

    def add_to_library(self, paths: list[str]):
        """Submit an index job for ``paths`` into the open library; returns the JobSpec."""
        from hashview.jobs import JobSpec
        from hashview.models import DEFAULT_MODEL

        if not self.library_path and not self.ask_new_library():
            return None
        tile_size, mpp = self.tiling()  # the library's: all its tiles stay comparable
        model = self.library_info["model"]["name"] or DEFAULT_MODEL
        args = {"paths": [str(Path(p).resolve()) for p in paths],
                "library_path": self.library_path, "model": model,
                "params": {"tile_size": tile_size, "target_mpp": mpp},
                "device": self.settings.device}
        if self.settings.index_engine == "ray":  # Settings ▸ Indexing: a Ray cluster
            args.update(engine="ray", address=self.settings.ray_address or None,
                        workers=max(1, self.settings.ray_workers))
        spec = JobSpec("index", args)
        self.submit_job(spec)
        return spec

    def ask_train(self) -> None:
        from hashview.jobs import JobSpec

        dialog = TrainDialog(self, device=self.settings.device)
        if dialog.exec():
            self.submit_job(JobSpec("train", dialog.job_args()))

    def check_library_labels(self, compare: bool = False):
        """Judge the open library's model on the library's labels in the background
        (``hashview check``), or with ``compare`` every trained model on the labelled tiles
        read again (``--models all``); the result shows when it ends. The JobSpec, or None."""
        from hashview.jobs import JobSpec

        if not self.library_path:
            self.warn("Open a library first (File ▸ Open library…)", "Check library")
            return None
        spec = JobSpec("check", {"library_path": self.library_path,
                                 **({"models": "all"} if compare else {})})
        self.submit_job(spec)
        return spec

    def _show_check(self, result: dict) -> None:
        """The check's verdict in a box: a warning when the model serves this tissue badly."""
        lines = [str(line) for line in result.get("lines") or []]
        if not lines:
            return
        self.show_message(lines[0], 30000)
        show = QMessageBox.information if result.get("fine") else QMessageBox.warning
        show(self, "Library check", "\n\n".join([lines[0], "\n".join(lines[1:])]))

    def ask_install_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Install model", "", "HashView models (*.safetensors);;All files (*)")
        if path:
            self.install_model_file(path)

    def install_model_file(self, path: str | Path):
        """Install a trained model (a colleague's, or one trained with ``hashview train``)
        among the user's models: Settings lists it and a library made with it searches. Its
        held-out warnings are shown, never hidden. Returns the card, or None (one-line box)."""
        from hashview.models import install_model

        try:
            card = install_model(path)
        except HashViewError as exc:
            self.warn(exc.message, "Install model")
            return None
        warnings = card.warnings()
        if warnings:
            self.warn(f"Model {card.name} is installed, but its held-out report warns: "
                      f"{'; '.join(warnings)}.", "Install model")
        else:
            self.show_message(f"Installed model {card.name}: choose it in Settings; libraries "
                              "made with it search now", 15000)
        return card

    def offer_interrupted_jobs(self) -> int:
        """Index jobs an earlier session left unfinished show in the Jobs panel with Resume."""
        count, problems = self.jobs.offer_interrupted()
        if count:
            self.docks[2].show()
            self.docks[2].raise_()
            self.show_message(f"{count} indexing job(s) did not finish last time: resume or "
                              "discard them in the Jobs panel", 30000)
        elif problems:
            self.show_message(f"Unreadable job file: {problems[0]}", 30000)
        return count

    def submit_job(self, spec) -> None:
        self.jobs.submit(spec)
        self.docks[2].show()
        self.docks[2].raise_()
        self.show_message(f"Started: {spec.title}")

    def _on_job_finished(self, spec, result, status: str) -> None:
        if spec.kind == "index":
            same = self.library_path and Path(spec.args["library_path"]).resolve() == \
                Path(self.library_path)
            if same:  # a failed or cancelled job keeps the sources it committed: show them too
                self.controller.invalidate()
                self.open_library(self.library_path)  # new sources, counts, outlines
                self._map_after_index(spec, status)
            check = (result or {}).get("check") if status == "done" else None
            # the model serves these labels badly: say so, once per verdict (the Library
            # panel's header keeps saying it)
            if check and not check.get("fine") and check.get("status_before") != \
                    check.get("status"):
                self._show_check(check)
                return
        elif spec.kind == "check" and status == "done" and result:
            self.library_panel.update_header()  # the check kept beside the library shows there
            self._show_check(result)
            return
        elif spec.kind == "train" and status == "done" and result:
            from hashview.models import install_model

            try:
                card = install_model(result["model_path"])
            except (HashViewError, KeyError) as exc:
                self.warn(f"training finished but the model could not be installed: {exc}")
                return
            if result.get("warning"):  # collapsed, no better, or outdone: never a success
                marked = result.get("quality") != "ok"  # ok: a bundled model did better
                self.warn(f"{result['warning']}. It is installed as {card.name}"
                          f"{' (marked in Settings)' if marked else ''}; the held-out report "
                          "is in the Jobs panel.",
                          title="Training finished: model not better" if marked
                          else "Training finished: a bundled model did better")
                return
            self.show_message(f"Model {card.name} is ready: choose it in Settings. "
                              f"{_held_out_summary(result.get('report') or {})}", 30000)
            return
        self.show_message(f"{spec.title}: {status}", 10000)

    def confirm_cancel_jobs(self) -> bool:
        """Before quitting: running jobs are cancelled (sources already stored are kept)."""
        running = self.jobs.running_count()
        if not running:
            return True
        answer = QMessageBox.question(
            self, "Quit HashView", f"{running} background job(s) still running. Cancel them and "
            "quit? An index keeps every source stored so far.")
        if answer != QMessageBox.StandardButton.Yes:
            return False
        self.jobs.cancel_all()
        return True


def _held_out_summary(report: dict) -> str:
    """The held-out vote@10 and mAP of the trained model beside its start's, and how it was
    trained, for the status bar."""
    held, start = report.get("held_out"), report.get("start_model")
    if not held:
        return ""
    text = f"Held-out vote@10 {held['vote_accuracy@10']:.3f}, mAP {held['map']:.3f}"
    if start:
        text += (f" ({start['name']} as it is: {start['vote_accuracy@10']:.3f}, "
                 f"{start['map']:.3f})")
    text += f" over {held['n_queries']} patches."
    best = report.get("best_bundled")
    if best:
        text += (f" Best other bundled model as it is: {best['name']} "
                 f"({best['vote_accuracy@10']:.3f}, {best['map']:.3f}).")
    if report.get("method") == "head" and start:
        text += f" Only the hash layer of {start['name']} was refitted."
    return text
