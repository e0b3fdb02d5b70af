"""The reference: a bare uvloop line echo server, no metrics, no limits.

``make bench`` runs it in the same run as ``echolab serve async``, so what
echolab's limits, instrumentation and timer coalescing cost or gain is
measured against the simplest server that speaks the ``lines`` protocol.
Usage: python -m echolab.bare_server PORT DELAY_MS
"""

import asyncio
import sys

import uvloop


class BareEcho(asyncio.Protocol):
    delay = 0.1

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport, self.partial = transport, b""
        self.call_later = asyncio.get_running_loop().call_later

    def data_received(self, data):  # type: ignore[no-untyped-def]
        *lines, self.partial = (self.partial + data).split(b"\n")
        if lines:
            reply = b"\n".join(line.upper() for line in lines) + b"\n"
            self.call_later(self.delay, self.transport.write, reply)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BareEcho, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    BareEcho.delay = float(sys.argv[2]) / 1000
    uvloop.run(main(int(sys.argv[1])))
