"""The jobs panel: runs :class:`hashview.jobs.JobSpec`s in worker processes and shows them.

Each job is a ``QProcess`` running ``python -m hashview.jobs.worker SPEC.json``; its stdout is
read asynchronously (``readyReadStandardOutput``), one JSON event per line, so the UI thread never
waits on a job. A crash of the worker cannot take the app down; it shows as a failed job.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QProcess, Qt, QTimer, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QListWidget, QListWidgetItem,
                               QPlainTextEdit, QProgressBar, QPushButton, QSplitter, QVBoxLayout,
                               QWidget)

from hashview.errors import HashViewError
from hashview.jobs import (JobSpec, cancel_file_for, describe_exit, discard_job_files,
                           find_interrupted_jobs, jobs_dir, parse_event, worker_command)

LOG_LINES_KEPT = 2000  # per job; a long training run must not grow memory without bound


def format_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"ETA {seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"ETA {minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"ETA {hours} h {minutes:02d} min"


def summarize_result(spec: JobSpec, result: Optional[dict]) -> str:
    if not result:
        return "Done"
    if spec.kind == "index":
        return (f"Done: {len(result.get('added', []))} added ({result.get('tiles_added', 0)} "
                f"tiles), {len(result.get('skipped', []))} skipped, "
                f"{len(result.get('failed', []))} failed")
    if spec.kind == "check":
        return f"Done: {result.get('verdict', '?')}"
    return f"Done: model {result.get('model_name', '?')} written"


class JobRow(QWidget):
    """One job in the list: title, progress bar, stage text, ETA and a Cancel button."""

    cancelClicked = Signal()
    resumeClicked = Signal()
    discardClicked = Signal()

    def __init__(self, spec: JobSpec, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.title = QLabel(spec.title)
        self.title.setToolTip(f"{spec.kind} job {spec.id}, created {spec.created}")
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.eta = QLabel("")
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy until the worker reports a total
        self.progress.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancelClicked)
        # An index job stopped before its end (cancelled, crashed, or the app closed) can be
        # run again: sources already stored are skipped, the rest is added.
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Index the inputs not stored yet; stored ones are kept")
        self.resume_button.clicked.connect(self.resumeClicked)
        self.discard_button = QPushButton("Discard")
        self.discard_button.setToolTip("Forget this job; sources already stored are kept")
        self.discard_button.clicked.connect(self.discardClicked)
        for button in (self.resume_button, self.discard_button):
            button.setVisible(False)
        self.stage = QLabel("Starting…")
        self.stage.setTextInteractionFlags(Qt.TextSelectableByMouse)

        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.eta)
        middle = QHBoxLayout()
        middle.addWidget(self.progress, 1)
        middle.addWidget(self.cancel_button)
        middle.addWidget(self.resume_button)
        middle.addWidget(self.discard_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addLayout(middle)
        layout.addWidget(self.stage)

    def show_progress(self, event: dict) -> None:
        done, total = int(event.get("done") or 0), event.get("total")
        if total is None:
            self.progress.setRange(0, 0)
        else:
            total = max(int(total), 1)
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        counts = f"{done}/{event['total']}" if total is not None else str(done)
        message = event.get("message") or ""
        self.stage.setText(f"{event.get('stage', '')} {counts}" + (f" — {message}" if message
                                                                    else ""))
        # "encoding" counts one slide's tiles: its ETA, from the tiles/s the message shows,
        # is that slide's
        eta = format_eta(event.get("eta_s"))
        per_slide = eta and event.get("stage") == "encoding"
        self.eta.setText(f"{eta} (this slide)" if per_slide else eta)

    def show_cancelling(self) -> None:
        self.cancel_button.setEnabled(False)
        self.stage.setText("Cancelling…")

    def show_final(self, status: str, text: str) -> None:
        if status == "done":
            if self.progress.maximum() == 0:
                self.progress.setRange(0, 1)
            self.progress.setValue(self.progress.maximum())
        elif self.progress.maximum() == 0:
            self.progress.setRange(0, 1)  # stop the busy animation
            self.progress.setValue(0)
        self.eta.setText("")
        self.stage.setText(text)
        self.cancel_button.setEnabled(False)
        self.cancel_button.setVisible(False)

    def offer_resume(self, with_discard: bool = False) -> None:
        self.resume_button.setVisible(True)
        self.discard_button.setVisible(with_discard)


@dataclass
class _JobRow:
    spec: JobSpec
    row: JobRow
    item: QListWidgetItem
    spec_path: Optional[Path] = None  # None until written
    process: Optional[QProcess] = None
    status: str = "running"  # running | done | failed | cancelled
    result: Optional[dict] = None
    final_event: Optional[dict] = None
    cancel_requested: bool = False
    stdout_buffer: bytearray = field(default_factory=bytearray)
    stderr_buffer: bytearray = field(default_factory=bytearray)
    log: deque = field(default_factory=lambda: deque(maxlen=LOG_LINES_KEPT))
    last_logged: tuple = ()
    kill_timer: Optional[QTimer] = None
    resumable: bool = False  # offered a Resume button once stopped


class JobsPanel(QWidget):
    """Runs jobs in worker processes; lists them with progress, ETA, log and Cancel.

    ``jobFinished(spec, result, status)``: ``result`` is the worker's result dict for "done",
    else None; ``status`` is "done", "failed" or "cancelled". ``jobEvent(job_id, event)`` relays
    every event the worker sends (e.g. for a status bar).
    """

    jobFinished = Signal(object, object, str)
    jobEvent = Signal(str, object)

    KILL_AFTER_MS = 10_000  # after Cancel's SIGTERM, a worker that has not exited is killed

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self._jobs: dict[str, _JobRow] = {}
        self.list = QListWidget()
        self.list.setSelectionMode(QListWidget.SingleSelection)
        self.list.currentItemChanged.connect(self._show_selected_log)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(LOG_LINES_KEPT)
        self.log_view.setPlaceholderText("Select a job to see its log")
        self.clear_button = QPushButton("Clear finished")
        self.clear_button.clicked.connect(self.clear_finished)

        splitter = QSplitter(Qt.Vertical)
        splitter.addWidget(self.list)
        splitter.addWidget(self.log_view)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 1)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter, 1)
        layout.addLayout(buttons)

    # ------------------------------------------------------------------ public API
    def submit(self, spec: JobSpec) -> None:
        """Write the spec to ``jobs_dir()/<id>.json`` and start its worker; returns at once."""
        if spec.id in self._jobs:
            raise ValueError(f"job {spec.id} was already submitted")
        job = self._add_job(spec)
        self._log(job, f"{spec.kind} job {spec.id}: {spec.title}")
        try:
            job.spec_path = spec.save(jobs_dir() / f"{spec.id}.json")
        except (HashViewError, OSError) as exc:
            reason = exc.message if isinstance(exc, HashViewError) else str(exc)
            self._finish(job, "failed", f"Failed: cannot write the job file ({reason})")
            return
        self._start_process(job)

    def cancel(self, job_id: str) -> None:
        """Ask the worker to stop (SIGTERM + cancel file); kill it if still there after 10 s."""
        job = self._jobs.get(job_id)
        if job is None or job.status != "running" or job.cancel_requested:
            return
        job.cancel_requested = True
        job.row.show_cancelling()
        self._log(job, "cancel requested")
        if job.spec_path is not None:
            with contextlib.suppress(OSError):  # the file is how Windows workers learn of it
                cancel_file_for(job.spec_path).touch()
        if job.process is not None:
            job.process.terminate()
            job.kill_timer = QTimer(self)
            job.kill_timer.setSingleShot(True)
            job.kill_timer.timeout.connect(lambda j=job: self._kill(j))
            job.kill_timer.start(self.KILL_AFTER_MS)

    def cancel_all(self) -> None:
        for job_id in list(self._jobs):
            self.cancel(job_id)

    # ------------------------------------------------------------------ resuming
    def offer_interrupted(self) -> tuple[int, list[str]]:
        """List the index jobs an earlier session left unfinished, each with Resume and
        Discard. Returns how many, and one line per leftover spec file that cannot be read."""
        found, problems = find_interrupted_jobs(jobs_dir())
        found = [job for job in found if job.spec.id not in self._jobs]  # listed already
        for interrupted in found:
            job = self._add_job(interrupted.spec)
            job.spec_path, job.status, job.resumable = interrupted.spec_path, "interrupted", True
            job.row.show_final("interrupted", "Interrupted: HashView closed before it finished. "
                                              "Sources already stored are kept; Resume adds the "
                                              "rest.")
            job.row.progress.setFormat("Not finished")  # how far it got is not known: no 0 %
            job.row.offer_resume(with_discard=True)
            self._log(job, f"interrupted {job.spec.kind} job {job.spec.id}: {job.spec.title} "
                           f"(created {job.spec.created})")
        return len(found), problems

    def resume(self, job_id: str) -> Optional[JobSpec]:
        """Run a stopped index job again as a new job; returns its spec (None if not
        resumable)."""
        job = self._jobs.get(job_id)
        if job is None or not job.resumable or job.status == "running":
            return None
        self.discard(job_id)
        spec = JobSpec(job.spec.kind, job.spec.args, title=job.spec.title)
        self.submit(spec)
        return spec

    def discard(self, job_id: str) -> None:
        """Forget a stopped job (its leftover files too); the library keeps what it stored."""
        job = self._jobs.get(job_id)
        if job is None or job.status == "running":
            return
        if job.spec_path is not None:
            discard_job_files(job.spec_path)
        self._remove(job)

    def running_count(self) -> int:
        return sum(1 for job in self._jobs.values() if job.status == "running")

    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def status(self, job_id: str) -> str:
        return self._jobs[job_id].status

    def row(self, job_id: str) -> JobRow:
        return self._jobs[job_id].row

    def log_text(self, job_id: str) -> str:
        return "\n".join(self._jobs[job_id].log)

    def clear_finished(self) -> None:
        for job in list(self._jobs.values()):
            if job.status not in ("running", "interrupted"):  # interrupted ones await a choice
                self._remove(job)

    def _remove(self, job: _JobRow) -> None:
        self.list.takeItem(self.list.row(job.item))
        job.row.deleteLater()
        del self._jobs[job.spec.id]
        if not self._jobs:
            self.log_view.clear()

    def _add_job(self, spec: JobSpec) -> _JobRow:
        row = JobRow(spec)
        item = QListWidgetItem()
        item.setData(Qt.UserRole, spec.id)
        item.setSizeHint(row.sizeHint())
        self.list.addItem(item)
        self.list.setItemWidget(item, row)
        job = _JobRow(spec, row, item)
        self._jobs[spec.id] = job
        row.cancelClicked.connect(lambda job_id=spec.id: self.cancel(job_id))
        row.resumeClicked.connect(lambda job_id=spec.id: self.resume(job_id))
        row.discardClicked.connect(lambda job_id=spec.id: self.discard(job_id))
        self.list.setCurrentItem(item)
        return job

    # ------------------------------------------------------------------ process
    def _start_process(self, job: _JobRow) -> None:
        program, *arguments = worker_command(job.spec_path)
        process = QProcess(self)
        process.setProgram(program)
        process.setArguments(arguments)
        process.setProcessChannelMode(QProcess.SeparateChannels)
        if hasattr(process, "setUnixProcessParameters"):
            # Without this the worker inherits every fd open in the app at fork time: a library
            # the app is reading at that instant keeps HDF5's shared lock in the worker, which
            # then finds its own library "in use by another process (locked)".
            process.setUnixProcessParameters(QProcess.UnixProcessFlag.CloseFileDescriptors)
        process.readyReadStandardOutput.connect(lambda j=job: self._read_stdout(j))
        process.readyReadStandardError.connect(lambda j=job: self._read_stderr(j))
        process.finished.connect(lambda code, exit_status, j=job:
                                 self._on_finished(j, code, exit_status))
        process.errorOccurred.connect(lambda error, j=job: self._on_error(j, error))
        job.process = process
        process.start()  # asynchronous: failures arrive through errorOccurred

    def _read_stdout(self, job: _JobRow) -> None:
        if job.process is None:
            return
        job.stdout_buffer += bytes(job.process.readAllStandardOutput())
        while True:
            end = job.stdout_buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(job.stdout_buffer[:end])
            del job.stdout_buffer[:end + 1]
            self._handle_line(job, line)

    def _read_stderr(self, job: _JobRow, final: bool = False) -> None:
        if job.process is None:
            return
        job.stderr_buffer += bytes(job.process.readAllStandardError())
        # Whole lines only: a crash report arrives in pieces ("Fatal Python error: " first).
        end = len(job.stderr_buffer) if final else job.stderr_buffer.rfind(b"\n") + 1
        text = bytes(job.stderr_buffer[:end]).decode("utf-8", errors="replace")
        del job.stderr_buffer[:end]
        for line in text.splitlines():
            if line.strip():
                self._log(job, line)  # tracebacks and library chatter: useful when it fails

    def _handle_line(self, job: _JobRow, line: bytes) -> None:
        event = parse_event(line)
        if event is None:
            return
        kind = event["event"]
        if kind == "progress":
            job.row.show_progress(event)
            key = (event.get("stage"), event.get("message"))
            if key != job.last_logged:  # one log line per stage/file, not per count
                job.last_logged = key
                self._log(job, f"{event.get('stage')}: {event.get('message') or ''}".rstrip(": "))
        elif kind == "log":
            self._log(job, f"{event.get('level', 'info')}: {event.get('message', '')}")
        elif kind in ("done", "error", "cancelled") and job.final_event is None:
            job.final_event = event
            if kind == "done":
                job.result = event.get("result")
        self.jobEvent.emit(job.spec.id, event)

    def _on_finished(self, job: _JobRow, exit_code: int, exit_status) -> None:
        self._read_stdout(job)
        self._read_stderr(job, final=True)
        if job.stdout_buffer:  # a last line without its newline
            line, job.stdout_buffer = bytes(job.stdout_buffer), bytearray()
            self._handle_line(job, line)
        final = job.final_event or {}
        kind = final.get("event")
        if kind == "done":
            self._finish(job, "done", summarize_result(job.spec, job.result))
        elif kind == "error":
            self._finish(job, "failed", f"Failed: {final.get('message', 'unknown error')}")
        elif kind == "cancelled" or job.cancel_requested:
            job.resumable = job.spec.kind == "index"
            self._finish(job, "cancelled", "Cancelled")
        else:
            # On a crash Qt reports the signal number as the exit code.
            job.resumable = job.spec.kind == "index"
            returncode = -exit_code if exit_status == QProcess.CrashExit else exit_code
            self._finish(job, "failed", f"Failed: {describe_exit(returncode)}")

    def _on_error(self, job: _JobRow, error) -> None:
        if error == QProcess.FailedToStart and job.status == "running":
            reason = job.process.errorString() if job.process is not None else str(error)
            self._finish(job, "failed", f"Failed: cannot start the worker ({reason})")

    def _kill(self, job: _JobRow) -> None:
        if job.status == "running" and job.process is not None:
            self._log(job, f"worker did not stop within {self.KILL_AFTER_MS // 1000} s; killing")
            job.process.kill()

    def _finish(self, job: _JobRow, status: str, text: str) -> None:
        if job.status != "running":
            return
        job.status = status
        if job.kill_timer is not None:
            job.kill_timer.stop()
            job.kill_timer.deleteLater()
            job.kill_timer = None
        if job.spec_path is not None:
            for path in (job.spec_path, cancel_file_for(job.spec_path)):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
        job.row.show_final(status, text)
        if job.resumable:
            job.row.offer_resume()
        self._log(job, text)
        if job.process is not None:
            job.process.deleteLater()
            job.process = None
        self.jobFinished.emit(job.spec, job.result if status == "done" else None, status)

    # ------------------------------------------------------------------ log view
    def _log(self, job: _JobRow, line: str) -> None:
        job.log.append(line)
        current = self.list.currentItem()
        if current is not None and current.data(Qt.UserRole) == job.spec.id:
            self.log_view.appendPlainText(line)

    def _show_selected_log(self, current: Optional[QListWidgetItem], _previous=None) -> None:
        job = self._jobs.get(current.data(Qt.UserRole)) if current is not None else None
        self.log_view.setPlainText("\n".join(job.log) if job is not None else "")
        self.log_view.moveCursor(QTextCursor.End)
