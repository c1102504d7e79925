#!/usr/bin/env python3
"""Logging TCP proxy for the smem / memfabric-hybrid config store protocol (SPEC 5).

    capture_proxy.py --listen 127.0.0.1:PORT [--upstream 127.0.0.1:PORT2] [--log FILE] [--max-seconds N]

With --upstream every byte is forwarded both ways and logged; without it the proxy acts as a
mute fake server: it answers the handshake with result 0 and records frames, never replying.
Each log line is JSON: {t, conn, dir: "c2s"|"s2c", kind: "handshake"|"hs_reply"|"frame"|"raw", hex, decoded}.
Prints READY once listening. Exits after --max-seconds (default 300).
"""
import argparse, json, socket, struct, sys, threading, time

MT = {0: "SET", 1: "GET", 2: "PREFIX", 3: "WATCH", 4: "ADD", 5: "REMOVE", 6: "APPEND", 7: "CAS",
      8: "WRITE", 9: "QUERY_ALIVE", 10: "WATCH_RANK_STATE", 11: "HEARTBEAT", 12: "UNWATCH",
      13: "CONTROL", 14: "INVALID_MSG"}


def _show(b):
    try:
        s = b.decode("ascii")
        if all(32 <= ord(c) < 127 for c in s):
            return s
    except UnicodeDecodeError:
        pass
    return "hex:" + b.hex()


def decode_body(body):
    """Try the packed body layout of SPEC 5.3; return dict or None."""
    if len(body) < 42:
        return None
    try:
        total, user_def, req_id, mt = struct.unpack_from("<QqQh", body, 0)
        off = 26
        if total > len(body) or not (0 <= mt <= 14):
            return None
        (nk,) = struct.unpack_from("<Q", body, off); off += 8
        if nk > 1024:
            return None
        keys = []
        for _ in range(nk):
            (ln,) = struct.unpack_from("<Q", body, off); off += 8
            if off + ln > len(body):
                return None
            keys.append(body[off:off + ln]); off += ln
        (nv,) = struct.unpack_from("<Q", body, off); off += 8
        if nv > 1024:
            return None
        vals = []
        for _ in range(nv):
            (ln,) = struct.unpack_from("<Q", body, off); off += 8
            if off + ln > len(body):
                return None
            vals.append(body[off:off + ln]); off += ln
        if off != total:
            return None
        return {"totalSize": total, "userDef": user_def, "requestId": req_id, "mt": mt,
                "mtName": MT.get(mt), "keys": [_show(k) for k in keys], "values": [_show(v) for v in vals]}
    except struct.error:
        return None


class Decoder:
    def __init__(self, direction, conn, log):
        self.buf = b""
        self.dir = direction
        self.conn = conn
        self.log = log
        self.hs_done = False

    def feed(self, data):
        self.buf += data
        while True:
            if not self.hs_done:
                need = 16 if self.dir == "c2s" else 2
                if len(self.buf) < need:
                    return
                raw, self.buf = self.buf[:need], self.buf[need:]
                self.hs_done = True
                if need == 16:
                    magic, ver, reconn = struct.unpack_from("<hhb", raw)
                    (rank_info,) = struct.unpack_from("<Q", raw, 8)
                    dec = {"magic": magic, "version": ver, "reconnect": reconn,
                           "worldSize": rank_info >> 32, "rankId": rank_info & 0xFFFFFFFF}
                    self.log(self.conn, self.dir, "handshake", raw, dec)
                else:
                    self.log(self.conn, self.dir, "hs_reply", raw, {"result": struct.unpack("<h", raw)[0]})
                continue
            if len(self.buf) < 16:
                return
            typ, res, blen, seq, crc = struct.unpack_from("<hhIII", self.buf)
            if len(self.buf) < 16 + blen:
                return
            raw = self.buf[:16 + blen]
            self.buf = self.buf[16 + blen:]
            body = raw[16:]
            dec = {"type": typ, "result": res, "bodyLen": blen, "seqNo": seq, "crc": crc}
            packed = decode_body(body)
            if packed is not None:
                dec["body"] = packed
            else:
                dec["text"] = _show(body)
            self.log(self.conn, self.dir, "frame", raw, dec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream")
    ap.add_argument("--log", default="-")
    ap.add_argument("--max-seconds", type=float, default=300)
    a = ap.parse_args()
    lock = threading.Lock()
    out = sys.stdout if a.log == "-" else open(a.log, "w", buffering=1)
    t0 = time.monotonic()

    def log(conn, d, kind, raw, dec):
        with lock:
            out.write(json.dumps({"t": round(time.monotonic() - t0, 4), "conn": conn, "dir": d, "kind": kind,
                                  "hex": raw.hex(), "decoded": dec}) + "\n")
            out.flush()

    host, port = a.listen.rsplit(":", 1)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, int(port)))
    ls.listen(64)
    ls.settimeout(0.5)
    print("READY", flush=True)
    n = 0

    def pump(src, dst, dec, conn):
        try:
            while True:
                d = src.recv(65536)
                if not d:
                    break
                dec.feed(d)
                if dst is not None:
                    dst.sendall(d)
        except OSError:
            pass
        log(conn, dec.dir, "close", b"", {"pending": dec.buf.hex()})
        for s in (src, dst):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def fake_server(c, conn):
        dec = Decoder("c2s", conn, log)
        orig_feed = dec.feed
        def feed(d):
            was = dec.hs_done
            orig_feed(d)
            if not was and dec.hs_done:
                c.sendall(struct.pack("<h", 0))
                log(conn, "s2c", "hs_reply", struct.pack("<h", 0), {"result": 0, "fake": True})
        dec.feed = feed
        pump(c, None, dec, conn)

    while time.monotonic() - t0 < a.max_seconds:
        try:
            c, _ = ls.accept()
        except socket.timeout:
            continue
        n += 1
        conn = n
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log(conn, "-", "accept", b"", {})
        if a.upstream:
            uh, up = a.upstream.rsplit(":", 1)
            try:
                u = socket.create_connection((uh, int(up)), timeout=5)
                u.settimeout(None)
                u.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as e:
                log(conn, "-", "upstream_fail", b"", {"err": str(e)})
                c.close()
                continue
            threading.Thread(target=pump, args=(c, u, Decoder("c2s", conn, log), conn), daemon=True).start()
            threading.Thread(target=pump, args=(u, c, Decoder("s2c", conn, log), conn), daemon=True).start()
        else:
            threading.Thread(target=fake_server, args=(c, conn), daemon=True).start()


if __name__ == "__main__":
    main()
