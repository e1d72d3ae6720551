"""The pipe between the proxy and its recorder process: captures sent in frames, big answers streamed after them.

A frame is a header (``<IQI``: captures, pickle bytes, big answers), the size of each big answer (``<Q`` each),
the captures pickled (each as the tuple of its fields: about 1 µs per exchange, where pickling the dataclasses
took 2.5), then each big answer's bytes, copied from its temporary file straight into the pipe. Two things in a
capture are not sent as data: a big answer (``tape.Spooled``, whose bytes follow the pickle) and the dialect an
exchange was relayed in (functions: sent by its path and looked up again among the installed backends'). Pickle
is safe here: only the proxy writes to its own child's pipe.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any, BinaryIO, NamedTuple

from ..backends.spec import Dialect
from .records import Capture
from .tape import Spooled

HEADER = struct.Struct("<IQI")
SIZE = struct.Struct("<Q")
COPY = 1024 * 1024  # bytes of a big answer copied per system call when sendfile cannot be used


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
    """The frame's header and pickle, and the big answers whose bytes go after it. Every dialect in ``captures`` must be
    an installed one (``installed_dialects``) or ``AlreadyRead``: the recorder process knows no other."""
    spools: list[Spooled] = []
    rows = []
    for capture in captures:
        row = _row(capture)
        if row[_ANSWER].__class__ is Spooled or row[_DIALECT].__class__ is Dialect:
            fields = list(row)
            if fields[_ANSWER].__class__ is Spooled:
                spools.append(fields[_ANSWER])
                fields[_ANSWER] = Ref("spool", len(spools) - 1)
            if fields[_DIALECT].__class__ is Dialect:
                fields[_DIALECT] = Ref("dialect", fields[_DIALECT].path)
            row = tuple(fields)
        rows.append(row)
    pickled = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
    sizes = [spooled_size(s) for s in spools]
    return b"".join([HEADER.pack(len(captures), len(pickled), len(spools)), *(SIZE.pack(n) for n in sizes), pickled]), spools


def spooled_size(spooled: Spooled) -> int:
    spooled.file.flush()
    return os.fstat(spooled.file.fileno()).st_size


def send(fd: int, frame: bytes, spools: list[Spooled]) -> None:
    """Write a frame and its big answers to the pipe (blocking: the proxy's writer thread calls this), closing the
    answers' files."""
    write_all(fd, frame)
    for spooled in spools:
        try:
            size = spooled_size(spooled)
            source, offset = spooled.file.fileno(), 0
            while offset < size:
                try:
                    sent = os.sendfile(fd, source, offset, size - offset)
                except OSError as exc:
                    if exc.errno not in (22, 38):  # EINVAL, ENOSYS: this pipe or system cannot; copy instead
                        raise
                    os.lseek(source, offset, os.SEEK_SET)
                    while offset < size:
                        chunk = os.read(source, min(COPY, size - offset))
                        write_all(fd, chunk)
                        offset += len(chunk)
                    break
                offset += sent
        finally:
            spooled.file.close()


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Closed(Exception):
    """The proxy closed the pipe: no more frames."""


def receive(stream: BinaryIO, dialects: Callable[[], dict[str, Dialect]]) -> list[Capture]:
    """The next frame's captures, their big answers as bytes. ``Closed`` at the end of the stream."""
    header = _exactly(stream, HEADER.size, at_start=True)
    _, pickled_size, spool_count = HEADER.unpack(header)
    sizes = [SIZE.unpack(_exactly(stream, SIZE.size))[0] for _ in range(spool_count)]
    pickled = _exactly(stream, pickled_size)
    spools = [_exactly(stream, n) for n in sizes]
    captures = []
    for row in pickle.loads(pickled):
        capture = Capture(*row)
        if capture.answer.__class__ is Ref:
            capture.answer = spools[capture.answer.value]
        if capture.dialect.__class__ is Ref:
            capture.dialect = dialects()[capture.dialect.value]
        captures.append(capture)
    return captures


def _exactly(stream: BinaryIO, size: int, at_start: bool = False) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        if at_start and not data:
            raise Closed
        raise Closed(f"the pipe ended inside a frame ({len(data)} of {size} bytes)")
    return data
