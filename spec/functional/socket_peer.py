#!/usr/bin/env python3
"""The peer the cosocket specs talk to: a line-command server on 127.0.0.1
(and optionally a UNIX socket, and TLS with a given certificate), started by
spec/functional/socket_util.lua on a free port and stopped by PID.

Every event goes to the log file, one line each, flushed at once, so that a
spec can assert what the peer saw ("open 3", "close 3", "tls 3 reused"):
the order of events, never elapsed time.

Commands, one per line; the connection's number is N:
  ECHO text     -> "text\\n"          CRLF text   -> "text\\r\\n"
  ID            -> "N\\n"             BYTES n     -> n bytes "x", no newline
  LONG n        -> n bytes "y" and "\\n"
  TWO a b       -> "a\\nb\\n"          (a reply with more after it)
  DRIP text     -> "text\\n" one byte per write (hostile chunking)
  UNTIL         -> "one--sep--two--sep--"
  ALL text      -> "text", then close  PARTIAL text -> the same, named for specs
  BYE           -> "bye\\n", then close HANGUP      -> close at once
  LATER         -> "ok\\n", then close a moment later
  SINK n        -> reads n bytes slowly, "ok n\\n" if they are "0123456789"...
  STOPREAD      -> reads nothing more (the sender's socket fills up)
  PARK          -> "released\\n" once another connection sends RELEASE
  RELEASE       -> wakes every PARKed connection, "released n\\n"
  SILENT        -> nothing (the caller times out); so does anything else
"""
import argparse
import os
import socket
import ssl
import sys
import threading
import time

lock = threading.Lock()
count = 0
log_file = None
parked = []  # threading.Events of connections waiting in PARK


def log(msg):
    with lock:
        log_file.write(msg + "\n")
        log_file.flush()


def serve(conn, n):
    log(f"open {n}")
    buf = b""
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.rstrip(b"\r").decode("latin-1")
                log(f"got {n} {line[:80]}")
                cmd, _, arg = line.partition(" ")
                if cmd == "ECHO":
                    conn.sendall(arg.encode("latin-1") + b"\n")
                elif cmd == "CRLF":
                    conn.sendall(arg.encode("latin-1") + b"\r\n")
                elif cmd == "ID":
                    conn.sendall(f"{n}\n".encode())
                elif cmd == "BYTES":
                    conn.sendall(b"x" * int(arg))
                elif cmd == "LONG":
                    conn.sendall(b"y" * int(arg) + b"\n")
                elif cmd == "TWO":
                    a, _, b = arg.partition(" ")
                    conn.sendall(f"{a}\n{b}\n".encode())
                elif cmd == "DRIP":
                    for ch in (arg + "\n").encode("latin-1"):
                        conn.sendall(bytes([ch]))
                        time.sleep(0.001)
                elif cmd == "UNTIL":
                    conn.sendall(b"one--sep--two--sep--")
                elif cmd in ("ALL", "PARTIAL"):
                    conn.sendall(arg.encode("latin-1"))
                    return
                elif cmd == "BYE":
                    conn.sendall(b"bye\n")
                    return
                elif cmd == "HANGUP":
                    return
                elif cmd == "SINK":
                    # reads n bytes slowly (the sender's socket fills up and
                    # it has to wait), checks them against "0123456789"
                    # repeated, and says so
                    need, got, bad = int(arg), 0, -1
                    pattern = b"0123456789"
                    while True:
                        take = buf[: need - got]
                        buf = buf[len(take):]
                        for i, ch in enumerate(take):
                            if bad < 0 and ch != pattern[(got + i) % 10]:
                                bad = got + i
                        got += len(take)
                        if got >= need:
                            break
                        time.sleep(0.002)
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    conn.sendall((f"ok {got}" if bad < 0 else f"bad at {bad}").encode() + b"\n")
                elif cmd == "STOPREAD":
                    # never reads again: the sender's socket fills up
                    time.sleep(60)
                    return
                elif cmd == "PARK":
                    # answers only once another connection says RELEASE:
                    # a wait that lasts exactly as long as the spec wants
                    ev = threading.Event()
                    with lock:
                        parked.append(ev)
                    ev.wait(60)
                    conn.sendall(b"released\n")
                elif cmd == "RELEASE":
                    with lock:
                        waiting = parked[:]
                        parked.clear()
                    for ev in waiting:
                        ev.set()
                    conn.sendall(f"released {len(waiting)}\n".encode())
                elif cmd == "LATER":
                    # answers, then hangs up on its own a moment later (an
                    # idle pooled connection the peer closes)
                    conn.sendall(b"ok\n")
                    time.sleep(0.2)
                    return
                # SILENT, and anything else (a TLS hello sent to the plain
                # port): no answer

    except (OSError, ssl.SSLError) as e:
        log(f"error {n} {e}")
    finally:
        try:
            conn.close()
        except OSError:
            pass
        if isinstance(conn, TLSConn):
            # 21: the client's last record was an alert (close_notify)
            log(f"last-record {n} {conn.last}")
        log(f"close {n}")


class TLSConn:
    """The server side of TLS over memory BIOs, so that the raw records stay
    visible: `last` is the content type of the last whole record the client
    sent (21 = alert: its close_notify when the connection ends)."""

    def __init__(self, sock, ctx):
        self.sock = sock
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=True)
        self.raw = b""
        self.last = None

    def _flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _fill(self):
        raw = self.sock.recv(65536)
        if not raw:
            self.inc.write_eof()
            return False
        self.raw += raw
        while len(self.raw) >= 5:
            n = int.from_bytes(self.raw[3:5], "big")
            if len(self.raw) < 5 + n:
                break
            self.last = self.raw[0]
            self.raw = self.raw[5 + n:]
        self.inc.write(raw)
        return True

    def _loop(self, op):
        while True:
            try:
                r = op()
                self._flush()
                return r
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    try:
                        return op()
                    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                        return b""

    def handshake(self):
        self._loop(self.obj.do_handshake)

    @property
    def session_reused(self):
        return self.obj.session_reused

    def recv(self, n):
        return self._loop(lambda: self.obj.read(n))

    def sendall(self, data):
        self.obj.write(data)
        self._flush()

    def close(self):
        self.sock.close()


def accept_loop(lsock, ctx):
    global count
    while True:
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        with lock:
            count += 1
            n = count
        if ctx is not None:
            def handshake(conn=conn, n=n):
                try:
                    conn.settimeout(10)
                    tconn = TLSConn(conn, ctx)
                    tconn.handshake()
                    conn.settimeout(None)
                except (OSError, ssl.SSLError) as e:
                    log(f"open {n}")
                    log(f"tls-failed {n} {e}")
                    log(f"close {n}")
                    conn.close()
                    return
                log(f"tls {n} {'reused' if tconn.session_reused else 'new'}")
                serve(tconn, n)
            threading.Thread(target=handshake, daemon=True).start()
        else:
            threading.Thread(target=serve, args=(conn, n), daemon=True).start()


def main():
    global log_file
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--unix")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args()
    log_file = open(args.log, "a")
    ctx = None
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(256)
    threads = [threading.Thread(target=accept_loop, args=(lsock, ctx), daemon=True)]
    if args.unix:
        usock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        usock.bind(args.unix)
        usock.listen(256)
        threads.append(threading.Thread(target=accept_loop, args=(usock, None), daemon=True))
    for t in threads:
        t.start()
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(lsock.getsockname()[1]))
    os.rename(tmp, args.port_file)
    for t in threads:
        t.join()


if __name__ == "__main__":
    sys.exit(main())
