"""The references: bare echo servers, no metrics, no limits, no shutdown.

``make bench`` runs them in the same run as echolab's servers, so what
echolab's limits and instrumentation cost (or its timer coalescing gains) is
measured against the simplest server of each kind: for ``lines``, an asyncio
Protocol on uvloop, asyncio streams on uvloop (a coroutine per connection)
and a ``socketserver.ThreadingTCPServer``; for HTTP, a bare ASGI app on
uvicorn (one process, uvloop) with either of its parsers, httptools
(async-http's) or h11 (the one with a header limit of its own). The
benchmark's client has one request outstanding per connection, so that the
line servers answer the lines of a read together, after one delay, costs
them nothing there.
Usage: python -m echolab.servers.bare uvloop|streams|threaded|httptools|h11 PORT DELAY_MS
"""

import asyncio
import socketserver
import sys
import time

import uvicorn
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


async def bare_asgi(scope, receive, send):  # type: ignore[no-untyped-def]
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    await asyncio.sleep(DELAY)
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body.upper()})


if __name__ == "__main__":
    kind, port, DELAY = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) / 1000
    if kind == "uvloop":
        uvloop.run(serve_uvloop(port))
    elif kind == "streams":
        uvloop.run(serve_streams(port))
    elif kind == "threaded":
        BareThreaded(("127.0.0.1", port), BareHandler).serve_forever()
    else:
        uvicorn.run(
            bare_asgi, host="127.0.0.1", port=port, loop="uvloop", http=kind, lifespan="off",
            access_log=False, log_level="warning", backlog=4096,
        )  # fmt: skip
