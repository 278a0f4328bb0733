"""One HashView window per user: ``hashview FILE`` hands FILE to the window already running.

The running app listens on a local socket (``QLocalServer``); a newly started app first tries to
connect to it, sends the paths it was given and exits once the running app has acknowledged
them. This is what a desktop double-click on a slide or a library does when HashView is open.

- Name: keyed by the user name and the HashView data folder (``HASHVIEW_HOME``), so separate data
  folders (and the tests' temporary ones) are separate instances. The socket goes in
  ``$XDG_RUNTIME_DIR`` (private to the user) when it is set, else in Qt's temporary folder, and
  is made accessible to its owner only.
- Protocol: one UTF-8 JSON line ``{"paths": [absolute paths]}`` from the new app, answered by
  ``ok`` (or ``error``) and a newline. Paths are made absolute by the sender: its working folder
  is not the running app's.
- A socket file left behind by a HashView that crashed answers nobody: the new app cannot
  connect, so it opens its own window and takes the name over. A running app that does not
  answer within ``REPLY_MS`` (its UI thread busy) is treated the same way: a second window opens
  rather than the double-click being lost.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

from hashview.fileio import user_data_dir

CONNECT_MS = 500
REPLY_MS = 5000
MAX_MESSAGE_BYTES = 1 << 20  # a megabyte of paths is plenty; more is not a HashView talking


def server_name() -> str:
    """The local socket name of this user's HashView (with this data folder)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name (some containers): the uid still separates users
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    key = f"{user}\0{user_data_dir().absolute()}".encode("utf-8")
    name = "hashview-" + hashlib.sha256(key).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.name == "posix" and os.path.isabs(runtime) and os.path.isdir(runtime):
        return os.path.join(runtime, name)
    return name


def encode_message(paths: Sequence[str]) -> bytes:
    absolute = [str(Path(p).absolute()) for p in paths]
    return json.dumps({"paths": absolute}).encode("utf-8") + b"\n"


def decode_message(line: bytes) -> list[str]:
    """The paths of one message; ``ValueError`` if it is not a HashView message."""
    message = json.loads(line.decode("utf-8"))
    if not isinstance(message, dict) or not isinstance(message.get("paths"), list):
        raise ValueError("not a HashView message")
    paths = message["paths"]
    if not all(isinstance(p, str) and os.path.isabs(p) for p in paths):
        raise ValueError("paths must be absolute strings")
    return paths


def send_to_running(paths: Sequence[str], name: Optional[str] = None) -> bool:
    """Hand ``paths`` to the running HashView; ``True`` once it acknowledged them, ``False`` if
    none is running (or it did not answer): then the caller opens its own window."""
    socket = QLocalSocket()
    socket.connectToServer(name or server_name())
    if not socket.waitForConnected(CONNECT_MS):
        return False
    try:
        socket.write(encode_message(paths))
        if not socket.waitForBytesWritten(REPLY_MS):
            return False
        while not socket.canReadLine():
            if not socket.waitForReadyRead(REPLY_MS):
                return False
        return bytes(socket.readLine().data()).strip() == b"ok"
    finally:
        socket.abort()


class InstanceServer(QObject):
    """Listens for later ``hashview`` starts; emits ``paths_received(list)`` for each message.

    The signal is emitted from the event loop after the answer is sent, so that the sender can
    exit while the window opens what it was given.
    """

    paths_received = Signal(list)

    def __init__(self, name: Optional[str] = None, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.name = name or server_name()
        self.server = QLocalServer(self)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self.server.newConnection.connect(self._accept)

    def listen(self) -> bool:
        """Start listening; a stale socket of a crashed HashView is removed first if needed.
        Call only after ``send_to_running`` found nobody answering on the name."""
        if self.server.listen(self.name):
            return True
        QLocalServer.removeServer(self.name)
        return self.server.listen(self.name)

    def error_string(self) -> str:
        return self.server.errorString()

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        while (socket := self.server.nextPendingConnection()) is not None:
            socket.readyRead.connect(lambda s=socket: self._read(s))
            socket.disconnected.connect(socket.deleteLater)
            self._read(socket)

    def _read(self, socket: QLocalSocket) -> None:
        if not socket.canReadLine():
            if socket.bytesAvailable() > MAX_MESSAGE_BYTES:
                socket.abort()
            return
        try:
            paths = decode_message(bytes(socket.readLine().data()))
        except ValueError:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            socket.write(b"error\n")
            socket.disconnectFromServer()
            return
        socket.write(b"ok\n")
        socket.flush()
        socket.disconnectFromServer()
        QTimer.singleShot(0, self, lambda: self.paths_received.emit(paths))
