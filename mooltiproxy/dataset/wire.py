"""The way from the proxy to its recorder process: captures sent in frames on a pipe, big answers' files beside them.

A frame is a header (``<IQI``: captures, pickle bytes, big answers) and the captures pickled (each as the tuple of its
fields: about 1 µs per exchange, where pickling the dataclasses took 2.5). Two things in a capture are not sent as
data: the dialect an exchange was relayed in (functions: sent by its path and looked up again among the installed
backends') and a big answer (``tape.Spooled``), whose temporary file is handed over itself, as a descriptor on a Unix
socket beside the pipe (``SCM_RIGHTS``), in the order of the frames. Copying a 10 MB answer into the pipe held the
recorder process at the pipe until it had read it all, and held it in memory until its record was built; a file
costs neither, so big answers can wait for their records while the small ones behind them are recorded
(``recorder.Recorder.take``). Pickle is safe here: only the proxy writes to its own child's pipe.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from ..backends.spec import Dialect
from .records import Capture
from .tape import Spooled

HEADER = struct.Struct("<IQI")
FDS_AT_ONCE = 250  # descriptors per message: Linux takes at most 253 (SCM_MAX_FD)


def installed_dialects() -> dict[str, Dialect]:
    """The dialects both ends can name: those of installed backends (a config's own backend module is the proxy's only).
    Imported when first needed: a recorder process that records only OpenAI exchanges never loads the backends."""
    from ..backends import registry

    return registry.dialects(registry.installed().values())


class AlreadyRead:
    """The dialect of an exchange the proxy has already turned into the OpenAI shape: only what it is recorded as."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (AlreadyRead, (self.kind,))

    @staticmethod
    def request(request: Any) -> Any:
        return request

    @staticmethod
    def answer(answer: Any) -> Any:
        return answer


class Ref(NamedTuple):
    """What stands in a sent capture for a big answer (``spool``: its index among the frame's) or a dialect (``dialect``:
    its path)."""

    kind: str
    value: Any


FIELDS = tuple(f.name for f in dataclasses.fields(Capture))
_ANSWER, _DIALECT = FIELDS.index("answer"), FIELDS.index("dialect")
_row = operator.attrgetter(*FIELDS)  # a capture as a tuple of its fields: pickled at C speed, unlike the dataclass


def encode(captures: list[Capture]) -> tuple[bytes, list[Spooled]]:
    """The frame (header and pickle), and the big answers whose files go beside it. Every dialect in ``captures`` must
    be an installed one (``installed_dialects``) or ``AlreadyRead``: the recorder process knows no other."""
    spools: list[Spooled] = []
    rows = []
    for capture in captures:
        row = _row(capture)
        if row[_ANSWER].__class__ is Spooled or row[_DIALECT].__class__ is Dialect:
            fields = list(row)
            if fields[_ANSWER].__class__ is Spooled:
                spools.append(fields[_ANSWER])
                fields[_ANSWER] = Ref("spool", (len(spools) - 1, fields[_ANSWER].size))
            if fields[_DIALECT].__class__ is Dialect:
                fields[_DIALECT] = Ref("dialect", fields[_DIALECT].path)
            row = tuple(fields)
        rows.append(row)
    pickled = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(captures), len(pickled), len(spools)) + pickled, spools


def send(fd: int, files: socket.socket, frame: bytes, spools: list[Spooled]) -> None:
    """Write a frame to the pipe and hand its big answers' files over on ``files`` (blocking: the proxy's writer thread
    calls this), closing the proxy's own copies."""
    try:
        write_all(fd, frame)
        for spooled in spools:
            spooled.complete()  # what the tape wrote is in the file before the recorder process reads it
        for at in range(0, len(spools), FDS_AT_ONCE):
            socket.send_fds(files, [b"f"], [s.file.fileno() for s in spools[at:at + FDS_AT_ONCE]])
    finally:
        for spooled in spools:
            spooled.file.close()


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Closed(Exception):
    """The proxy closed the pipe: no more frames."""


def receive(fd: int, files: socket.socket, dialects: Callable[[], dict[str, Dialect]]) -> list[Capture]:
    """The next frame's captures from the pipe ``fd``, their big answers as files (``Spooled``) from ``files``.
    ``Closed`` at the end of the pipe."""
    header = _exactly(fd, HEADER.size, at_start=True)
    _, pickled_size, spool_count = HEADER.unpack(header)
    pickled = _exactly(fd, pickled_size)
    received: list[int] = []
    while len(received) < spool_count:
        _, fds, _, _ = socket.recv_fds(files, 1, min(FDS_AT_ONCE, spool_count - len(received)))
        if not fds:
            raise Closed(f"the proxy's big answers ended after {len(received)} of {spool_count}")
        received += fds
    captures = []
    for row in pickle.loads(pickled):
        capture = Capture(*row)
        if capture.answer.__class__ is Ref:
            index, size = capture.answer.value
            capture.answer = Spooled(os.fdopen(received[index], "rb"), size)
        if capture.dialect.__class__ is Ref:
            capture.dialect = dialects()[capture.dialect.value]
        captures.append(capture)
    return captures


def _exactly(fd: int, size: int, at_start: bool = False) -> bytes:
    """``size`` bytes from the pipe (a read returns what is there, so as many reads as it takes)."""
    data = os.read(fd, size)
    if not data and at_start:
        raise Closed
    if len(data) < size:
        parts = [data]
        got = len(data)
        while got < size:
            more = os.read(fd, size - got)
            if not more:
                raise Closed(f"the pipe ended inside a frame ({got} of {size} bytes)")
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data
