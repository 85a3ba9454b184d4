#!/usr/bin/env python3
"""Writes the hand-made seed inputs into fuzz/seeds/<target>/ (and the ones that trip a
known issue-13 defect into fuzz/regressions/<target>/). Run from anywhere; re-running
rewrites the same files. Seeds are never minimised away: fuzz/run.sh gives them to the
fuzzer beside fuzz/corpus/<target>/ (the fuzzer's own finds, named by hash), and
tests/fuzz_corpus.rs replays both."""
import os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = os.path.dirname(HERE)

def put(kind, target, name, data):
    d = os.path.join(FUZZ, kind, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

IAC, SB, SE, WILL, DO, NOP = 255, 250, 240, 251, 253, 241

# chat_line: a stream of lines; the first byte also picks the framer's line limit.
chat = {
    "say": "hello there\n",
    "commands": "/nick bob\r\n/msg alice hi there\n/join #dev\n/rooms\n/who\n/me waves\n/help\n/quit gone fishing\n",
    "usage": "/nick\n/nick a b\n/msg bob\n/join\n/me\n/frobnicate x\n/\n",
    "slash-escape": "//etc/passwd\n",
    "controls": b"hi\x1b[31mred\x07\r\n\x00nul\x7f\tend\n",
    "bidi": "x \u202eevil\u202c \u2066iso\u2069\n".encode(),
    "bad-utf8": b"bad\xffbyte\xc3\n\xe2\x82\n",
    "long-line": b"\x05" + b"a" * 80 + b"\nok\n",
    "cr-split": b"ab\r\ncd\r\r\n\r\n",
    "no-newline": "unfinished",
}
for n, d in chat.items():
    put("seeds", "chat_line", n, d)
# Known defect (issue 13, sanitiser): zero-width and bidi marks pass through.
put("regressions", "chat_line", "known-zero-width", "a\u200bd\u200dm\u2060i\ufeffn\u200e\u200f\u061c\u2028\n".encode())

# lines: the framer alone; the first byte picks the limit (1 + b % 16) and, with its top
# bit, splitting over-long lines rather than dropping them.
lines = {
    "drop-crlf": b"\x04ab\r\ncdef\r\n\r\nabcde\r\n",
    "drop-long": b"\x03toolong\nok\nlast-too-long",
    "drop-cr-at-limit": b"\x03abc\r\nabc\r\rabc\r",
    "split-utf8": "\x83abcé€xyz\n€€€\nπ".encode(),
    "split-invalid": b"\x81\xff\xe2\x82\xac\xe0\x80\xc0\xf0\x9f\x98\n",
    "split-cr": b"\x82ab\r\nabc\r\nab\r\r\n",
    "newlines": b"\x80\n\n\n\r\n",
    "no-newline": b"\x8funfinished line without an end",
}
for n, d in lines.items():
    put("seeds", "lines", n, d)

# telnet: option negotiation, subnegotiation, escapes, chunk borders.
telnet = {
    "plain": b"hello\r\n/who\n",
    "negotiation": bytes([IAC, WILL, 1, ord("h"), IAC, DO, 3, ord("i"), ord("\n")]),
    "subneg": bytes([IAC, SB, 24, 0]) + b"xterm" + bytes([IAC, SE]) + b"ok\n",
    "iac-iac": bytes([ord("a"), IAC, IAC, ord("b"), IAC, NOP, ord("c")]),
    "sb-with-iac-iac": bytes([IAC, SB, 31, IAC, IAC, 0, 80, IAC, SE]) + b"after\n",
    "trailing-iac": b"text" + bytes([IAC]),
    "ayt-ga": bytes([IAC, 246, ord("x"), IAC, 249, ord("y")]),
    # Long inputs to mutate: a terminated 300-byte subnegotiation, and 300 bytes of text.
    "long-subneg": bytes([IAC, SB, 24]) + b"s" * 300 + bytes([IAC, SE]) + b"after\n",
    "long-text": b"t" * 299 + b"\n" + bytes([IAC, NOP]) + b"z",
}
for n, d in telnet.items():
    put("seeds", "telnet", n, d)
# Known defects (issue 13, telnet filter): a lone 0xFF eats the next byte; an
# unterminated IAC SB swallows all later input.
put("regressions", "telnet", "known-lone-ff", b"5\xff\n/who\n")
put("regressions", "telnet", "known-unterminated-sb", bytes([IAC, SB, 24]) + b"x" * 300 + b"\nhello everyone\n")

# http_request: valid heads, smuggling shapes, traversal targets.
http = {
    "get": "GET /a/b.txt?x=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    "head-10": "HEAD / HTTP/1.0\r\n\r\n",
    "absolute-form": "GET http://example.org/x/y HTTP/1.1\r\nHost: example.org\r\n\r\n",
    "pipelined": "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    "cl-cl": "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    "te-nonascii": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \xe9chunked\r\n\r\n0\r\n\r\n",
    "cl-nonascii": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 44\xff\r\n\r\n",
    "te-cl": "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "two-ranges": "GET /f HTTP/1.1\r\nRange: bytes=0-1\r\nRange: bytes=5-9\r\n\r\n",
    "traversal": "GET /a/%2e%2e/%2E%2E%2Fetc/passwd HTTP/1.1\r\n\r\n",
    "double-encoded": "GET /%252e%252e/x HTTP/1.1\r\n\r\n",
    "backslash": "GET /a%5c..%5cb HTTP/1.1\r\n\r\n",
    "nul": "GET /a%00b HTTP/1.1\r\n\r\n",
    "open-redirect": "GET //evil.example/x HTTP/1.1\r\nHost: x\r\n\r\n",
    "fragment": "GET /sub#x HTTP/1.1\r\n\r\n",
    "dot": "GET /. HTTP/1.1\r\n\r\n",
    "space-in-target": "GET /a b HTTP/1.1\r\n\r\n",
    "http2": "GET / HTTP/2.0\r\n\r\n",
    "partial": "GET / HTTP/1.1\r\nHost:",
    "bare-lf": "GET / HTTP/1.1\nHost: x\n\n",
    "obs-fold": "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
}
for n, d in http.items():
    put("seeds", "http_request", n, d)

# http_range: first byte < 0x80 is the file length, else 8 little-endian bytes follow.
def rng(length, value):
    if length < 0x80:
        return bytes([length]) + value.encode()
    return b"\x80" + struct.pack("<Q", length) + value.encode()
ranges = {
    "first-last": rng(100, "bytes=0-9"),
    "open-ended": rng(100, "bytes=90-"),
    "suffix": rng(100, "bytes=-10"),
    "suffix-long": rng(100, "bytes=-200"),
    "past-end": rng(100, "bytes=100-"),
    "suffix-zero": rng(100, "bytes=-0"),
    "multi": rng(100, "bytes=0-1,5-6"),
    "reversed": rng(100, "bytes=9-1"),
    "other-unit": rng(100, "items=0-1"),
    "empty-file": rng(0, "bytes=0-0"),
    "big-file": rng(1 << 40, "bytes=1099511627770-"),
    "spaces": rng(100, " bytes= 1 - 2 "),
    "max": rng(2**64 - 1, "bytes=18446744073709551614-18446744073709551615"),
}
for n, d in ranges.items():
    put("seeds", "http_range", n, d)
# Known defect (issue 13): numbers past u64 make the range "whole file".
put("regressions", "http_range", "known-huge-first", rng(100, "bytes=99999999999999999999999-"))
put("regressions", "http_range", "known-huge-suffix", rng(100, "bytes=-99999999999999999999999"))
put("regressions", "http_range", "known-huge-last", rng(100, "bytes=0-99999999999999999999999"))

# proxy_header: v1 and v2 headers, LOCAL, UNSPEC, partial and bad ones.
SIG = b"\r\n\r\n\x00\r\nQUIT\n"
proxy = {
    "v1-tcp4": b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n",
    "v1-tcp6": b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n",
    "v1-mapped": b"PROXY TCP6 ::ffff:10.0.0.1 ::1 5 80\r\n",
    "v1-unknown": b"PROXY UNKNOWN\r\n",
    "v1-unknown-addrs": b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
    "v1-leading-zero": b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    "v1-family-mismatch": b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
    "v1-partial": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
    "v1-too-long": b"PROXY " + b"x" * 120,
    "v2-tcp4": SIG + bytes([0x21, 0x11, 0, 12, 192, 168, 0, 1, 192, 168, 0, 11, 0xDC, 0x04, 0x01, 0xBB]) + b"data",
    "v2-tcp6": SIG + bytes([0x21, 0x21, 0, 36]) + bytes(range(32)) + bytes([0, 80, 1, 187]),
    "v2-local": SIG + bytes([0x20, 0x00, 0, 0]),
    "v2-unspec": SIG + bytes([0x21, 0x00, 0, 0]),
    "v2-tlvs": SIG + bytes([0x21, 0x11, 0, 20, 10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2, 0x04, 0, 1, 0x55, 0, 0, 0, 0]),
    "v2-short": SIG + bytes([0x21, 0x11, 0, 12, 1, 2, 3]),
    "v2-bad-version": SIG + bytes([0x11, 0x11, 0, 12]),
    "v2-huge": SIG + bytes([0x21, 0x11, 0xFF, 0xFF]),
    "v2-unix": SIG + bytes([0x21, 0x31, 0, 216]) + bytes(216),
}
for n, d in proxy.items():
    put("seeds", "proxy_header", n, d)
