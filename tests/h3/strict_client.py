#!/usr/bin/env python3
"""A strict, independent HTTP/3 client (aioquic) for Quiver's WebTransport endpoint.

It opens a WebTransport session with an extended CONNECT (`:protocol webtransport`, an `origin` header) and reports
what it saw as JSON lines on stdout. aioquic enforces RFC 9114 §6.2.1: a peer that finishes, resets or stops
(STOP_SENDING) one of the HTTP/3 critical streams (control, QPACK encoder/decoder) gets the connection closed with
H3_CLOSED_CRITICAL_STREAM (0x104). Chromium tolerates that; this client does not, which is why Quiver's tests use
it (tests/h3_strict.rs). aioquic checks a finished control stream in every version, STOP_SENDING on its critical
streams from 1.7 on; runs with 0.9.20 (Debian 12), 1.2.0 (Debian 13) and 1.7.2.

After the response, the client waits for the server to close the connection (a refusal, or a session the test
shuts down), having first, with --then:
  wait-close   done nothing more;
  open-stream  opened a WebTransport stream (Quiver's control stream) without writing to it;
  garbage      opened one and written bytes that are not a Quiver frame;
  client-close sent Hello on one, then closed the session as Chromium does (WT_SESSION_GONE, the close capsule);
  session-gone-stream  the same without the capsule: the control stream's WT_SESSION_GONE alone.

Output: `{"kind": "accepted", ...}` once a 200 arrives (so a test can act on an open session), then exactly one
`{"kind": "result", ...}` line: the status, the WebTransport close capsule (code, reason) if any, who closed the
connection with which code, and the HTTP/3 errors aioquic raised itself. Exit status 0 when the status is the
expected one and nothing broke the HTTP/3 rules; 1 with a message on stderr otherwise. Bounded by --timeout.
"""

import argparse
import asyncio
import json
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer, BufferReadError
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection, H3Stream
from aioquic.h3.events import DataReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic import events as quic_events
from aioquic.quic.events import ConnectionTerminated, StreamReset

# aioquic 0.9 has no StopSendingReceived (1.2 has): it does not tell the application about STOP_SENDING.
StopSendingReceived = getattr(quic_events, "StopSendingReceived", ())

H3_CLOSED_CRITICAL_STREAM = 0x104
CLOSE_WEBTRANSPORT_SESSION = 0x2843
# The first WebTransport application error code in HTTP/3's space (draft-ietf-webtrans-http3, "webtransport_code").
WT_ERROR_FIRST = 0x52E4A40FA8DB
# What a browser resets and stops its session's streams with as it closes the session.
WT_SESSION_GONE = 0x170D7B68
# A Hello frame without a token (`server/web/test/vectors.json`, "hello_web": protocol version 5).
HELLO = bytes.fromhex("140000050e7175697665722d7765622f302e310000")


def http3_code_to_webtransport(code):
    """The WebTransport application error code an HTTP/3 error code carries, or None."""
    if code < WT_ERROR_FIRST or (code - 0x21) % 0x1F == 0:
        return None
    shifted = code - WT_ERROR_FIRST
    return shifted - shifted // 0x1F


class StrictClient(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.report = {
            "kind": "result",
            "status": None,
            "capsule": None,
            "connect_stream_ended": False,
            "stream_bytes": 0,
            "stream_ended": False,
            "h3_errors": [],
            "closed_by": None,
            "close_code": None,
            "close_reason": None,
            "stop_sending": [],
            "resets": [],
        }
        self.connect_stream = None
        self.capsule_buffer = b""
        self.settings = asyncio.get_running_loop().create_future()
        self.response = asyncio.get_running_loop().create_future()
        self.terminated = asyncio.get_running_loop().create_future()
        # aioquic's H3 layer closes the QUIC connection itself on a protocol error (e.g. a closed critical
        # stream): record those closes, they are what this client is here to catch.
        quic_close = self._quic.close

        def close(error_code=0, frame_type=None, reason_phrase=""):
            if self.report["closed_by"] is None:
                self.report["h3_errors"].append({"code": error_code, "reason": reason_phrase})
            return quic_close(error_code=error_code, frame_type=frame_type, reason_phrase=reason_phrase)

        self._quic.close = close

    def quic_event_received(self, event):
        if isinstance(event, StopSendingReceived):
            self.report["stop_sending"].append(event.stream_id)
        elif isinstance(event, StreamReset):
            self.report["resets"].append(event.stream_id)
        elif isinstance(event, ConnectionTerminated):
            local = bool(self.report["h3_errors"])
            self.report["closed_by"] = "client" if local else "server"
            self.report["close_code"] = event.error_code
            self.report["close_reason"] = event.reason_phrase
            for future in (self.settings, self.response, self.terminated):
                if not future.done():
                    future.set_result(None)
            return
        for h3_event in self.h3.handle_event(event):
            self.h3_event_received(h3_event)
        if self.h3.received_settings is not None and not self.settings.done():
            self.settings.set_result(None)

    def h3_event_received(self, event):
        if isinstance(event, WebTransportStreamDataReceived):
            self.report["stream_bytes"] += len(event.data)
            self.report["stream_ended"] |= event.stream_ended
            return
        if getattr(event, "stream_id", None) != self.connect_stream:
            return
        if isinstance(event, HeadersReceived):
            headers = dict(event.headers)
            status = headers.get(b":status")
            self.report["status"] = int(status) if status is not None else None
            if not self.response.done():
                self.response.set_result(None)
        elif isinstance(event, DataReceived):
            self.capsule_buffer += event.data
            self.parse_capsules()
        if getattr(event, "stream_ended", False):
            self.report["connect_stream_ended"] = True

    def parse_capsules(self):
        while True:
            buf = Buffer(data=self.capsule_buffer)
            try:
                kind = buf.pull_uint_var()
                length = buf.pull_uint_var()
                payload = buf.pull_bytes(length)
            except BufferReadError:
                return
            self.capsule_buffer = self.capsule_buffer[buf.tell() :]
            if kind == CLOSE_WEBTRANSPORT_SESSION and length >= 4:
                code = int.from_bytes(payload[:4], "big")
                self.report["capsule"] = {"code": code, "reason": payload[4:].decode("utf-8", "replace")}

    def send_connect(self, authority, path, origin):
        self.connect_stream = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"webtransport"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"origin", origin.encode()),
        ]
        self.h3.send_headers(self.connect_stream, headers, end_stream=False)
        self.transmit()

    def open_stream(self, data):
        stream = self.h3.create_webtransport_stream(self.connect_stream, is_unidirectional=False)
        # aioquic marks only the WebTransport streams the peer opens as such, and would parse what the server sends
        # on this one as HTTP/3 frames (then fail with H3_FRAME_ERROR): mark it the way it marks those.
        h3_stream = self.h3._stream.setdefault(stream, H3Stream(stream))
        h3_stream.frame_type = FrameType.WEBTRANSPORT_STREAM
        h3_stream.session_id = self.connect_stream
        if data:
            self._quic.send_stream_data(stream, data)
        self.transmit()
        return stream

    def close_session(self, stream, capsule=True):
        # As Chromium closes a session: its streams reset and stopped with WT_SESSION_GONE, then the close capsule
        # (code 0, no reason) on the CONNECT stream, which ends. Without the capsule: the stream's code alone.
        self._quic.reset_stream(stream, WT_SESSION_GONE)
        self._quic.stop_stream(stream, WT_SESSION_GONE)
        if not capsule:
            self.transmit()
            return
        capsule = Buffer(capacity=16)
        capsule.push_uint_var(CLOSE_WEBTRANSPORT_SESSION)
        capsule.push_uint_var(4)
        capsule.push_uint32(0)
        self.h3.send_data(self.connect_stream, capsule.data, end_stream=True)
        self.transmit()


def emit(line):
    print(json.dumps(line), flush=True)


async def run(args):
    configuration = QuicConfiguration(
        alpn_protocols=H3_ALPN,
        is_client=True,
        max_datagram_frame_size=65536,
        server_name=args.server_name or args.host,
    )
    if args.ca:
        configuration.load_verify_locations(args.ca)
    else:
        configuration.verify_mode = ssl.CERT_NONE
    async with connect(
        args.host, args.port, configuration=configuration, create_protocol=StrictClient, wait_connected=True
    ) as client:
        # An extended CONNECT needs the server's SETTINGS (SETTINGS_ENABLE_CONNECT_PROTOCOL) first, RFC 9220 §3.
        await client.settings
        if client.report["closed_by"] is None and args.then != "no-connect":
            client.send_connect(f"{args.host}:{args.port}", args.path, args.origin)
            await client.response
        if client.report["status"] == 200 and client.report["closed_by"] is None:
            if args.then == "open-stream":
                client.open_stream(b"")
            elif args.then == "garbage":
                # A Quiver frame is `varint length || body`: an 8-byte varint of 2^62 - 1 is over any frame limit.
                client.open_stream(b"\xff" * 8)
            elif args.then in ("client-close", "session-gone-stream"):
                # Hello, then the close once the Welcome came: the server is then serving the control stream.
                stream = client.open_stream(HELLO)
                for _ in range(500):
                    if client.report["stream_bytes"] > 0 or client.report["closed_by"] is not None:
                        break
                    await asyncio.sleep(0.01)
                client.close_session(stream, capsule=args.then == "client-close")
            emit({"kind": "accepted"})
        # Whatever was asked for, the server is the one to end the connection: wait for it.
        await client.terminated
        # This client's HTTP/3 critical streams (control, QPACK encoder and decoder): the server must never stop or
        # reset them (RFC 9114 §6.2.1); only aioquic 1.7 and later closes the connection itself when it does.
        h3 = client.h3
        names = ("control", "encoder", "decoder")
        local = [getattr(h3, f"_local_{name}_stream_id", None) for name in names]
        peer = [getattr(h3, f"_peer_{name}_stream_id", None) for name in names]
        # Ours the server may only stop (STOP_SENDING); its own it may only reset: neither is allowed.
        client.report["critical_streams"] = [stream for stream in local if stream is not None]
        client.report["server_critical_streams"] = [stream for stream in peer if stream is not None]
        return client.report


def problems(report, expected_status):
    found = []
    # (0: no response expected, as with --then no-connect.)
    if report["status"] != (expected_status or None):
        found.append(f"expected status {expected_status}, got {report['status']}")
    for error in report["h3_errors"]:
        name = " (H3_CLOSED_CRITICAL_STREAM)" if error["code"] == H3_CLOSED_CRITICAL_STREAM else ""
        found.append(f"aioquic closed the connection with HTTP/3 error {error['code']:#x}{name}: {error['reason']}")
    if report["close_code"] == H3_CLOSED_CRITICAL_STREAM:
        found.append("the connection was closed with H3_CLOSED_CRITICAL_STREAM")
    if report["closed_by"] is None:
        found.append("the connection did not end")
    for stream in report.get("critical_streams", []):
        if stream in report["stop_sending"]:
            found.append(f"the server stopped this client's critical stream {stream} (RFC 9114 §6.2.1)")
    for stream in report.get("server_critical_streams", []):
        if stream in report["resets"]:
            found.append(f"the server reset its own critical stream {stream} (RFC 9114 §6.2.1)")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-name", help="TLS server name (default: --host)")
    parser.add_argument("--path", default="/quiver")
    parser.add_argument("--origin", default="http://localhost")
    trust = parser.add_mutually_exclusive_group(required=True)
    trust.add_argument("--ca", help="PEM file of the certificate (or its CA) to trust")
    trust.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    parser.add_argument("--expect-status", type=int, required=True)
    parser.add_argument(
        "--then", choices=["wait-close", "open-stream", "garbage", "no-connect", "client-close", "session-gone-stream"],
        default="wait-close",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before giving up (default 10)")
    args = parser.parse_args()
    try:
        report = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except asyncio.TimeoutError:
        print(f"strict_client: no end within {args.timeout} s", file=sys.stderr)
        emit({"kind": "result", "error": "timeout"})
        return 1
    except Exception as exc:  # noqa: BLE001 - any failure is reported, then the exit status says so
        print(f"strict_client: {type(exc).__name__}: {exc}", file=sys.stderr)
        emit({"kind": "result", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    if report["close_code"] is not None:
        report["close_webtransport_code"] = http3_code_to_webtransport(report["close_code"])
    emit(report)
    found = problems(report, args.expect_status)
    for problem in found:
        print(f"strict_client: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
