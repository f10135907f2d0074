"""One streamed STOW-RS request to a backend: a backend that stops reading its body is cut
after the read timeout, and the client's other studies are not held waiting on it."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp

from routing.dicomweb.upload import Upload


def test_a_backend_that_reads_nothing_is_cut_after_the_read_timeout():
    async def scenario() -> tuple[float, object]:
        # A real peer that accepts the connection and never reads: its socket buffers fill.
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                upload = Upload("node-a", "1.2.3", f"http://127.0.0.1:{port}/dicom-web/studies", {}, session,
                                aiohttp.ClientTimeout(sock_connect=2, sock_read=1))
                await upload.begin_part()
                started = time.monotonic()
                while await upload.put(b"\0" * 65536):  # until the backend is found to stall
                    assert time.monotonic() - started < 30
                answer = await upload.finish()
                return time.monotonic() - started, answer
        finally:
            server.close()

    seconds, answer = asyncio.run(scenario())
    assert answer.status is None and "took nothing of the body for 1s" in answer.error
    assert seconds < 15
