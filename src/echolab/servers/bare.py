"""The references: bare line echo servers, no metrics, no limits, no shutdown.

``make bench`` runs them in the same run as echolab's servers, so what
echolab's limits and instrumentation cost (or its timer coalescing gains) is
measured against the simplest server of each kind that speaks ``lines``:
an asyncio Protocol on uvloop, asyncio streams on uvloop (a coroutine per
connection), and a ``socketserver.ThreadingTCPServer``. The benchmark's
client has one request outstanding per connection, so that the first and
the last answer the lines of a read together, after one delay, costs them
nothing there.
Usage: python -m echolab.servers.bare uvloop|streams|threaded PORT DELAY_MS
"""

import asyncio
import socketserver
import sys
import time

import uvloop

DELAY = 0.1


class BareEcho(asyncio.Protocol):
    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport, self.partial = transport, b""
        self.call_later = asyncio.get_running_loop().call_later

    def data_received(self, data):  # type: ignore[no-untyped-def]
        *lines, self.partial = (self.partial + data).split(b"\n")
        if lines:
            reply = b"\n".join(line.upper() for line in lines) + b"\n"
            self.call_later(DELAY, self.transport.write, reply)


async def serve_uvloop(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BareEcho, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


async def bare_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            await asyncio.sleep(DELAY)
            writer.write(line.upper())
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def serve_streams(port: int) -> None:
    server = await asyncio.start_server(bare_streams, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


class BareHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        partial = b""
        while data := self.request.recv(65536):
            *lines, partial = (partial + data).split(b"\n")
            if lines:
                time.sleep(DELAY)
                self.request.sendall(b"\n".join(line.upper() for line in lines) + b"\n")


class BareThreaded(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096  # the default, 5, would sink it at once

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        pass  # clients closing at the end of a run reset their connections


if __name__ == "__main__":
    kind, port, DELAY = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) / 1000
    if kind == "uvloop":
        uvloop.run(serve_uvloop(port))
    elif kind == "streams":
        uvloop.run(serve_streams(port))
    else:
        BareThreaded(("127.0.0.1", port), BareHandler).serve_forever()
