"""A minimal HTTP/1.1 keep-alive client on asyncio streams, so the load generator spends as little of the
machine's two cores as possible (httpx costs several times more CPU per request)."""

from __future__ import annotations

import asyncio
from typing import Any


class HttpError(RuntimeError):
    pass


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        self.writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise HttpError("connection closed")
        status = int(status_line.split(b" ", 2)[1])
        length, chunked, close = 0, False, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            data = bytearray()
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    break
                data += await self.reader.readexactly(size)
                await self.reader.readline()
            payload = bytes(data)
        else:
            payload = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        self.writer.close()

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()


class Client:
    """POSTs over a pool of at most ``max_connections`` keep-alive connections; a request finding none free
    waits for one (that wait is part of its latency, as with any real client pool)."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None,
                 max_connections: int = 64) -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._extra = extra.encode()
        self._idle: list[Connection] = []
        self._all: list[Connection] = []

    async def _get(self, fresh: bool = False) -> tuple[Connection, bool]:
        """A connection and whether it was reused (an idle one the server may have closed meanwhile)."""
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
        reader, writer = await asyncio.open_connection(self.host, self.port)
        conn = Connection(reader, writer)
        self._all.append(conn)
        return conn, False

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n".encode() + self._extra
                + b"Content-Type: application/json\r\nContent-Length: ")
        async with self._slots:
            conn, reused = await self._get()
            try:
                result = await conn.post(head, body)
            except (HttpError, ConnectionError, asyncio.IncompleteReadError):
                conn.close()
                if not reused:
                    raise
                # The server closed an idle keep-alive connection (uvicorn: after 5 s): the request never
                # reached it, so sending it again on a new connection is what any HTTP client does.
                conn, _ = await self._get(fresh=True)
                try:
                    result = await conn.post(head, body)
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                conn.close()
                raise
            if not conn.closed:
                self._idle.append(conn)
            return result

    @property
    def connections(self) -> int:
        """Connections opened in all (a pool of at most ``max_connections`` open at a time; connections the
        server closed while idle are replaced, so this can exceed the pool size)."""
        return len(self._all)

    async def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
