#!/usr/bin/env python3
"""WebTransport interop client for the meeting controller, built on aioquic's H3Connection.

Connects over HTTP/3 (ALPN h3), opens a WebTransport session with an extended CONNECT to
/meetings/{meeting}, opens one WebTransport bidirectional stream and speaks signaling v1 on it
(4-byte big-endian length + JSON). It joins with --token and waits for join_response. With
--token2 a second participant joins on a second connection and sends a `message`; the first must
receive it. The server certificate is pinned by its SHA-256 (--hash, hex or base64), as browsers
do with serverCertificateHashes.

    python3 tests/interop/wt_client.py --host 127.0.0.1 --port 4433 --meeting m1 \
        --hash <sha-256 of cert DER> --token <jwt> [--token2 <jwt>]

Exit code 0 on success, 1 on failure, 64 on bad arguments. Needs `pip install aioquic`.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import ssl
import struct
import sys
from typing import Optional

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
from aioquic.h3.events import (
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset


VERBOSE = bool(os.environ.get("MC_WT_DEBUG"))


def encode_frame(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


class FrameBuffer:
    """Splits a byte stream into signaling v1 frames."""

    def __init__(self) -> None:
        self.buf = b""

    def push(self, data: bytes) -> list:
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            (n,) = struct.unpack(">I", self.buf[:4])
            if n == 0 or n > 65536:
                raise ValueError(f"bad frame length {n}")
            if len(self.buf) < 4 + n:
                break
            out.append(json.loads(self.buf[4 : 4 + n]))
            self.buf = self.buf[4 + n :]
        return out


class WebTransportClient(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.session_id: Optional[int] = None
        self.stream_id: Optional[int] = None
        self.session_status: asyncio.Future = asyncio.get_running_loop().create_future()
        self.messages: asyncio.Queue = asyncio.Queue()
        self.frames = FrameBuffer()
        self.closed: Optional[str] = None

    def open_session(self, authority: str, path: str, origin: Optional[str]) -> None:
        self.session_id = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"webtransport"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"sec-webtransport-http3-draft02", b"1"),
        ]
        if origin:
            headers.append((b"origin", origin.encode()))
        self.h3.send_headers(stream_id=self.session_id, headers=headers, end_stream=False)
        self.transmit()

    def open_stream(self) -> int:
        assert self.session_id is not None
        self.stream_id = self.h3.create_webtransport_stream(self.session_id, is_unidirectional=False)
        # aioquic marks only peer-opened bidirectional streams as WebTransport; without this it
        # parses the server's payload on our own stream as HTTP/3 frames.
        with self.h3._get_or_create_stream(self.stream_id) as stream:
            stream.frame_type = FrameType.WEBTRANSPORT_STREAM
            stream.session_id = self.session_id
        self.transmit()
        return self.stream_id

    def send(self, obj: dict) -> None:
        assert self.stream_id is not None
        self._quic.send_stream_data(self.stream_id, encode_frame(obj), end_stream=False)
        self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if VERBOSE:
            print(f"quic event: {event!r}", file=sys.stderr, flush=True)
        if isinstance(event, ConnectionTerminated):
            self.closed = f"connection closed: code {event.error_code:#x} {event.reason_phrase}"
            if not self.session_status.done():
                self.session_status.set_exception(ConnectionError(self.closed))
            self.messages.put_nowait(None)
        if isinstance(event, StreamReset) and event.stream_id == self.session_id:
            if not self.session_status.done():
                self.session_status.set_exception(ConnectionError("CONNECT stream reset"))
        for h3_event in self.h3.handle_event(event):
            self.h3_event_received(h3_event)

    def h3_event_received(self, event: H3Event) -> None:
        if VERBOSE:
            print(f"h3 event: {event!r}", file=sys.stderr, flush=True)
        if isinstance(event, HeadersReceived) and event.stream_id == self.session_id:
            status = dict(event.headers).get(b":status", b"0").decode()
            if not self.session_status.done():
                self.session_status.set_result(int(status))
        elif isinstance(event, WebTransportStreamDataReceived) and event.stream_id == self.stream_id:
            for msg in self.frames.push(event.data):
                self.messages.put_nowait(msg)
            if event.stream_ended:
                self.messages.put_nowait(None)
        elif isinstance(event, DataReceived) and event.stream_id == self.session_id:
            # Capsules on the CONNECT stream: CLOSE_WEBTRANSPORT_SESSION ends the session.
            if event.data.startswith(b"\x68\x43"):
                self.closed = "session closed by server"
                self.messages.put_nowait(None)

    async def next_of_type(self, kind: str, who: str) -> dict:
        while True:
            msg = await self.messages.get()
            if msg is None:
                raise ConnectionError(f"{who}: {self.closed or 'stream ended'}")
            print(f"{who} <- {json.dumps(msg)}", flush=True)
            if msg.get("type") == kind:
                return msg
            if msg.get("type") == "error":
                raise RuntimeError(f"{who}: error {msg.get('code')}: {msg.get('message')}")


def pinned_hash(s: str) -> bytes:
    if len(s) == 64 and all(c in "0123456789abcdefABCDEF" for c in s):
        return bytes.fromhex(s)
    return base64.b64decode(s + "=" * (-len(s) % 4), altchars=b"-_" if "-" in s or "_" in s else None)


async def participant(args, name: str, token: str, stack):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536)
    config.verify_mode = ssl.CERT_NONE  # pinned by hash below
    config.server_name = args.server_name or args.host
    ctx = connect(args.host, args.port, configuration=config, create_protocol=WebTransportClient)
    client: WebTransportClient = await stack.enter_async_context(ctx)
    if args.hash:
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = client._quic.tls._peer_certificate
        der = cert.public_bytes(Encoding.DER)
        if hashlib.sha256(der).digest() != pinned_hash(args.hash):
            raise ConnectionError("server certificate does not match --hash")
    authority = f"{args.server_name or args.host}:{args.port}"
    client.open_session(authority, f"/meetings/{args.meeting}", args.origin)
    status = await asyncio.wait_for(client.session_status, args.timeout)
    if status // 100 != 2:
        raise ConnectionError(f"{name}: session refused with status {status}")
    print(f"{name}: session {client.session_id} established", flush=True)
    client.open_stream()
    client.send(
        {
            "type": "join",
            "meeting_id": args.meeting,
            "token": token,
            "display_name": name,
            "request_id": f"join-{name}",
        }
    )
    resp = await asyncio.wait_for(client.next_of_type("join_response", name), args.timeout)
    return client, resp


async def run(args) -> None:
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        a, a_resp = await participant(args, "alice", args.token, stack)
        if not args.token2:
            return
        b, b_resp = await participant(args, "bob", args.token2, stack)
        payload = {"hello": "from bob"}
        b.send({"type": "message", "payload": payload})
        msg = await asyncio.wait_for(a.next_of_type("message", "alice"), args.timeout)
        if msg.get("from") != b_resp.get("participant_id") or msg.get("payload") != payload:
            raise RuntimeError(f"unexpected message {msg}")
        a.send({"type": "leave"})
        b.send({"type": "leave"})
        await asyncio.sleep(0.2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--server-name", help="TLS server name and :authority host (default: --host)")
    p.add_argument("--meeting", required=True)
    p.add_argument("--hash", help="SHA-256 of the server certificate (DER), hex or base64")
    p.add_argument("--token", required=True)
    p.add_argument("--token2")
    p.add_argument("--origin")
    p.add_argument("--timeout", type=float, default=10.0)
    try:
        args = p.parse_args()
    except SystemExit as e:
        return 64 if e.code else 0
    try:
        asyncio.run(run(args))
    except Exception as e:  # noqa: BLE001 - report any failure as a failed check
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
