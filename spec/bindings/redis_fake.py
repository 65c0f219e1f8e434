#!/usr/bin/env python3
"""A hostile Redis for spec/bindings/redis_spec.lua: it parses the client's
commands as real RESP (a malformed request ends the connection, so a client
that sent anything but `*N` bulk strings sees it) and answers with whatever
the spec asks for, so malformed replies can be written as data.

  RAW <bytes>       writes <bytes> as the reply and keeps reading
  RAWCLOSE <bytes>  writes <bytes> and closes the connection
  SILENT ...        (and AUTH ...) never answers; the connection stays open
  ARGS ...          replies with an array of the arguments it received
  anything else     -ERR fake does not know <name>

Usage: redis_fake.py PORTFILE. Listens on 127.0.0.1, a free port written
to PORTFILE once it listens; runs until killed.
"""
import os
import socket
import sys
import threading


class Closed(Exception):
    pass


def read_line(f):
    line = f.readline(70000)
    if not line.endswith(b"\r\n"):
        raise Closed()
    return line[:-2]


def read_command(f):
    head = read_line(f)
    if not head.startswith(b"*"):
        raise Closed()
    args = []
    for _ in range(int(head[1:])):
        h = read_line(f)
        if not h.startswith(b"$"):
            raise Closed()
        n = int(h[1:])
        data = f.read(n + 2)
        if len(data) != n + 2 or data[-2:] != b"\r\n":
            raise Closed()
        args.append(data[:-2])
    return args


def serve(conn):
    f = conn.makefile("rb")
    try:
        while True:
            args = read_command(f)
            name = args[0].upper() if args else b""
            if name == b"RAW":
                conn.sendall(args[1])
            elif name == b"RAWCLOSE":
                conn.sendall(args[1])
                break
            elif name in (b"SILENT", b"AUTH"):
                continue
            elif name == b"ARGS":
                out = [b"*%d\r\n" % (len(args) - 1)]
                for a in args[1:]:
                    out.append(b"$%d\r\n%s\r\n" % (len(a), a))
                conn.sendall(b"".join(out))
            else:
                conn.sendall(b"-ERR fake does not know " + name + b"\r\n")
    except (Closed, ValueError, IndexError, OSError):
        pass
    finally:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()


def main():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as out:
        out.write(str(srv.getsockname()[1]))
    os.rename(tmp, sys.argv[1])
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
