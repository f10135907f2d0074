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


def _posts(bodies: list[list[bytes]]) -> list[tuple[dict[str, str], bytes, object]]:
    """Each list of parts sent as one Upload to a real HTTP server on loopback: what the
    server saw (headers, body) and the answer the Upload read."""
    from aiohttp import web

    seen: list[tuple[dict[str, str], bytes]] = []

    async def store(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        return web.json_response({}, content_type="application/dicom+json")

    async def scenario() -> list[object]:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/studies", store)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        answers = []
        try:
            async with aiohttp.ClientSession() as session:
                for parts in bodies:
                    upload = Upload("node-a", "1.2.3", f"http://127.0.0.1:{port}/studies", {}, session,
                                    aiohttp.ClientTimeout(sock_connect=2, sock_read=5))
                    for part in parts:
                        await upload.begin_part()
                        for i in range(0, len(part), 65536):  # as the client's body is read
                            assert await upload.put(part[i:i + 65536])
                    answers.append(await upload.finish())
        finally:
            await runner.cleanup()
        return answers

    answers = asyncio.run(scenario())
    return [(headers, body, answer) for (headers, body), answer in zip(seen, answers, strict=True)]


def _multipart(headers: dict[str, str], parts: list[bytes]) -> bytes:
    boundary = headers["Content-Type"].rsplit("boundary=", 1)[1]
    return b"\r\n".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p for p in parts) \
        + f"\r\n--{boundary}--\r\n".encode()


def test_one_part_goes_with_content_length_and_more_or_larger_ones_chunked_all_byte_exact():
    import os

    from routing.dicomweb.upload import HOLD_LIMIT

    one, small, large = [os.urandom(525_000)], [os.urandom(4000), os.urandom(4100)], [os.urandom(HOLD_LIMIT + 1)]
    for (headers, body, answer), parts, whole in zip(_posts([one, small, large]), [one, small, large],
                                                     [True, False, False], strict=True):
        assert answer.status == 200  # type: ignore[attr-defined]
        assert body == _multipart(headers, parts)
        assert ("Content-Length" in headers) is whole and ("Transfer-Encoding" in headers) is not whole, headers
