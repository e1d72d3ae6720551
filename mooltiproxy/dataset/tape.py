"""The tape an exchange leaves for the recorder: the answer as it passed, or its stream put back
together, whether the exchange was cut short and why. Filled on the request path, cheaply; turned
into records later, by the recorder's writer."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from ..errors import ProxyError
from .reassembly import Reassembler, StreamReassembler
from .records import COMPLETION, Capture, RecordOnly
from .spooling import Spooler, SpoolFile

if TYPE_CHECKING:
    from ..backends.spec import Dialect
# A relayed stream's bytes are kept raw and parsed a batch at a time: here whenever this much has gathered,
# and the rest by the recorder at the end, so a stream holds its text, not its bytes. A dozen events per
# batch keeps parsing off the per-chunk path; at 64 KiB, 1000 concurrent streams each held all their
# bytes, 6 KiB more per stream than now (bench/RESULTS.md, S4).
_PARSE_AT = 2 * 1024
# A non-streamed answer larger than this is held in an unlinked temporary file until its record is built, not in
# memory: 100 clients reading 10 MB answers slowly held a gigabyte when the proxy kept them (bench/RESULTS.md, S7).
# A recording proxy's tapes write it through its spooling.Spooler, off the event loop.
SPOOL_AT = 1024 * 1024

CLIENT_LEFT = "the client disconnected"


class PendingStream:
    """A stream's answer as the recorder finishes it: the bytes not parsed yet, then the reassembly."""

    __slots__ = ("assembler", "delivered", "rest", "why_cut")

    @property
    def truncated(self) -> bool:
        return self.assembler.truncated

    def __init__(self, assembler: StreamReassembler, rest: bytes, why_cut: str | None, delivered: bool = False) -> None:
        self.assembler, self.rest, self.why_cut, self.delivered = assembler, rest, why_cut, delivered

    def resolve(self) -> tuple[dict[str, Any], str | None]:
        """The whole answer, and why the stream was cut short (None when it ended properly).

        A client that leaves once its stream's end marker was sent to it (``[DONE]``, Anthropic's ``message_stop``)
        had the whole answer: SDKs close as soon as they read the marker, often before the chunked body's last
        bytes, and that is no cut."""
        if self.rest:
            self.assembler.feed(self.rest)
        why = self.why_cut
        if why == CLIENT_LEFT and (self.delivered or self.assembler.done):
            why = None
        if why is None and not (self.assembler.done or self.assembler.finished):
            why = self.assembler.error or "the stream ended before its last event"
        return self.assembler.answer(), why


class Spooled:
    """A big non-streamed answer's bytes, in a temporary file until the recorder reads them (once). ``writer``: the
    ``spooling.SpoolFile`` still writing them, if any (``complete`` waits for it)."""

    __slots__ = ("file", "size", "writer")

    def __init__(self, file: Any, size: int, writer: SpoolFile | None = None) -> None:
        self.file, self.size, self.writer = file, size, writer

    def complete(self) -> None:
        """Every byte in the file (written here if the spooler's thread has not got to it yet)."""
        if self.writer is not None:
            self.writer.finish()
        else:
            self.file.flush()

    def read(self) -> bytes:
        try:
            self.complete()
            self.file.seek(0)
            return bytes(self.file.read())
        finally:
            self.file.close()


class Tape:
    """What an exchange leaves for the recorder, gathered as it passes: the answer, or the stream put
    back together, and whether (and why) it was cut short."""

    __slots__ = ("answer", "delivered", "dialect", "endpoint", "error", "limit", "reassembler", "relayed_body", "relayed_size",
                 "spool", "spooler", "status", "streamed", "why_cut")

    def __init__(self, endpoint: str, limit: int | None = None, dialect: Dialect | None = None,
                 spooler: Spooler | None = None) -> None:
        self.endpoint = endpoint
        self.spooler = spooler  # writes a big answer's file off the event loop; without one, it is written as it passes
        self.limit = limit  # dataset.max_text: the most text of an answer the record keeps
        self.dialect = dialect  # the API the exchange speaks, when it is relayed in another than OpenAI's
        self.answer: Any = None
        self.reassembler: StreamReassembler | None = None
        self.relayed_body: list[bytes] = []
        self.relayed_size = 0
        self.spool: SpoolFile | None = None  # a big non-streamed answer's file (SPOOL_AT): its relay waits while it is behind
        self.error: str | None = None
        self.status = 0
        self.why_cut: str | None = None
        self.streamed = False
        self.delivered = False  # the proxy sent the stream's end marker: the client had the whole answer

    def _assembler(self) -> StreamReassembler:
        if self.reassembler is None:
            if self.dialect is not None:
                self.reassembler = self.dialect.reassembler(self.limit)
            else:
                self.reassembler = Reassembler("completion" if self.endpoint == COMPLETION else "chat", self.limit)
        return self.reassembler

    def relayed(self, chunk: bytes, stream: bool) -> None:
        if stream:
            self.relayed_body.append(chunk)
            self.relayed_size += len(chunk)
            if self.relayed_size >= _PARSE_AT:
                self._assembler().feed(b"".join(self.relayed_body))
                self.relayed_body.clear()
                self.relayed_size = 0
        else:
            # A non-streamed answer is kept whole for the record, up to the limit; past it there is no JSON left
            # to read, and the record says the answer was left out.
            self.relayed_size += len(chunk)
            if self.limit is not None and self.relayed_size > self.limit:
                if self.spool is not None:
                    self.spool.close()
                    self.spool = None
                self.relayed_body.clear()
            elif self.spool is not None:
                self.spool.write(chunk)
            else:
                self.relayed_body.append(chunk)
                if self.relayed_size > SPOOL_AT:
                    self.spool = (self.spooler or Spooler(background=False)).open()
                    self.spool.writelines(self.relayed_body)
                    self.relayed_body.clear()
        self.streamed = self.streamed or stream

    async def tap(self, events: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
        """The events, each added to the reassembly on its way; a ``RecordOnly`` one stops here."""
        assembler = self._assembler()
        async for event in events:
            if isinstance(event, dict):
                assembler.add(event)
                if event.__class__ is RecordOnly:
                    continue
            yield event

    def cut(self, why: str) -> None:
        self.why_cut = self.why_cut or why

    def failed(self, exc: ProxyError) -> None:
        self.status = exc.status
        self.error = exc.message

    def capture(self, *, request_id: str, target: str, request: Any, status: int, key: str | None, stream: bool,
                prompt: str | None, started: float, tried: list[str], conversation: str | None = None, client: str = "") -> Capture:
        answer: Any = self.answer
        truncated = False
        if self.reassembler is not None or self.streamed:
            answer = PendingStream(self._assembler(), b"".join(self.relayed_body), self.why_cut, self.delivered)
        elif answer is None and self.relayed_size:
            truncated = self.limit is not None and self.relayed_size > self.limit
            if truncated:
                answer = None
            elif self.spool is not None:
                answer = Spooled(self.spool.file, self.relayed_size, self.spool)
            else:
                answer = b"".join(self.relayed_body)
            self.spool = None
        return Capture(
            request_id=request_id, endpoint=self.endpoint, target=target, request=request, answer=answer, status=status, key=key,
            stream=stream, prompt=prompt, latency_ms=(time.perf_counter() - started) * 1000, cut_short=self.why_cut is not None,
            cut_reason=self.why_cut, truncated=truncated, error=self.error, tried=tried, dialect=self.dialect,
            conversation=conversation, client=client,
        )
