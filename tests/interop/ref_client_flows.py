#!/usr/bin/env python3
"""Drive the reference (memfabric-hybrid 1.3.0) config store CLIENT against a server URL.

    <venv-mf>/bin/python ref_client_flows.py tcp://127.0.0.1:PORT [--flows a,b,...] [--world-size 2]
                         [--flow-timeout 30] [--build-dir DIR] [--list]

Flows (each runs in its own child process, killed after --flow-timeout seconds):
  kv           reference TcpConfigStore client (internal C++ API, reached through the C shim
               ref_store_shim.cpp, built on the fly with g++): SET/GET/ADD/APPEND/CAS/WRITE/PREFIX/
               REMOVE/QUERY_ALIVE/WATCH/UNWATCH with results checked against what the reference
               server returns.
  parked_get   two client processes (ranks 0 and 1): rank 0 parks a GET (5 s), rank 1 SETs the key.
  bm_explicit  smem_bm_init(url, ws, deviceId 0, rankId 0, startConfigStore=false): connects to the
               store (handshake + HEARTBEAT), then fails in hybm_init (no Ascend driver): rc -1,
               "init hybm failed". A store failure gives a different message.
  bm_auto      same with autoRanking: also GET "AutoRanking#" (userDef 120000) -> rank.
  shm          smem_shm_init(url, ws, rank 0, dev 0, startConfigStore=false): handshake + HEARTBEAT,
               then hybm_init fails: rc -1, "init hybm failed".
  ws_mismatch  a client with worldSize ws+1 must be refused (handshake -2000): connect fails.
Prints one JSON object (per-flow ok/details) on stdout; exit 0 iff every flow behaved as it does
against the reference server itself. Native reference logs go to stderr.
"""
import argparse, ctypes, json, os, shutil, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
ALL_FLOWS = ["kv", "parked_get", "bm_explicit", "bm_auto", "shm", "ws_mismatch"]


# ----------------------------------------------------------------------------- child side
def _redirect_native_stdout():
    """The reference logs to fd 1; keep a private fd for our JSON result."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return out


def _mf():
    import memfabric_hybrid as mf
    mf.set_log_level(int(os.environ.get("MF_LOG_LEVEL", "3")))
    return mf


class Shim:
    def __init__(self, path):
        L = ctypes.CDLL(path)
        c = ctypes
        u64p = c.POINTER(c.c_uint64)
        L.rs_register_url.argtypes = [c.c_char_p]
        L.rs_connect.restype = c.c_void_p
        L.rs_connect.argtypes = [c.c_char_p, c.c_uint32, c.c_int32, c.c_int32]
        L.rs_destroy.argtypes = [c.c_char_p]
        L.rs_set.argtypes = [c.c_void_p, c.c_char_p, c.c_uint64, c.c_char_p, c.c_uint64]
        L.rs_get.argtypes = [c.c_void_p, c.c_char_p, c.c_uint64, c.c_int64, c.c_char_p, c.c_uint64, u64p]
        L.rs_add.argtypes = [c.c_void_p, c.c_char_p, c.c_uint64, c.c_int64, c.POINTER(c.c_int64)]
        L.rs_remove.argtypes = [c.c_void_p, c.c_char_p, c.c_uint64]
        L.rs_append.argtypes = [c.c_void_p, c.c_char_p, c.c_uint64, c.c_char_p, c.c_uint64, u64p]
        L.rs_cas.argtypes = [c.c_void_p, c.c_char_p, c.c_uint64, c.c_char_p, c.c_uint64, c.c_char_p, c.c_uint64,
                             c.c_char_p, c.c_uint64, u64p]
        L.rs_write.argtypes = [c.c_void_p, c.c_char_p, c.c_uint64, c.c_char_p, c.c_uint64, c.c_uint32]
        L.rs_prefix.argtypes = [c.c_void_p, c.c_char_p, c.c_uint64, c.c_char_p, c.c_uint64, u64p, u64p]
        L.rs_query_alive.argtypes = [c.c_void_p, c.c_uint32, c.POINTER(c.c_uint32)]
        self.CB = c.CFUNCTYPE(None, c.c_void_p, c.c_int, c.c_void_p, c.c_uint64, c.c_void_p, c.c_uint64)
        L.rs_watch.argtypes = [c.c_void_p, c.c_char_p, c.c_uint64, self.CB, c.c_void_p, c.POINTER(c.c_uint32)]
        L.rs_unwatch.argtypes = [c.c_void_p, c.c_uint32]
        self.L = L
        self.h = None
        self.buf = ctypes.create_string_buffer(1 << 20)

    def connect(self, url, ws, rank, retry=1):
        port = self.L.rs_register_url(url.encode())
        self.h = self.L.rs_connect(url.encode(), ws, rank, retry)
        return port, bool(self.h)

    def destroy(self, url):
        self.L.rs_destroy(url.encode())

    def set(self, k, v):
        return self.L.rs_set(self.h, k, len(k), v, len(v))

    def get(self, k, timeout_ms):
        n = ctypes.c_uint64()
        r = self.L.rs_get(self.h, k, len(k), timeout_ms, self.buf, len(self.buf), ctypes.byref(n))
        return r, self.buf.raw[:n.value]

    def add(self, k, inc):
        o = ctypes.c_int64()
        r = self.L.rs_add(self.h, k, len(k), inc, ctypes.byref(o))
        return r, o.value

    def remove(self, k):
        return self.L.rs_remove(self.h, k, len(k))

    def append(self, k, v):
        n = ctypes.c_uint64()
        r = self.L.rs_append(self.h, k, len(k), v, len(v), ctypes.byref(n))
        return r, n.value

    def cas(self, k, e, v):
        n = ctypes.c_uint64()
        r = self.L.rs_cas(self.h, k, len(k), e, len(e), v, len(v), self.buf, len(self.buf), ctypes.byref(n))
        return r, self.buf.raw[:n.value]

    def write(self, k, v, off):
        return self.L.rs_write(self.h, k, len(k), v, len(v), off)

    def prefix(self, p):
        n = ctypes.c_uint64(); cnt = ctypes.c_uint64()
        r = self.L.rs_prefix(self.h, p, len(p), self.buf, len(self.buf), ctypes.byref(n), ctypes.byref(cnt))
        raw = self.buf.raw[:n.value]
        out, i = {}, 0
        while i < len(raw):
            kl = int.from_bytes(raw[i:i + 8], "little"); i += 8
            key = raw[i:i + kl]; i += kl
            vl = int.from_bytes(raw[i:i + 8], "little"); i += 8
            out[key] = raw[i:i + vl]; i += vl
        return r, out

    def query_alive(self, rank):
        a = ctypes.c_uint32(0xDEADBEEF)
        r = self.L.rs_query_alive(self.h, rank, ctypes.byref(a))
        return r, a.value


def _b(x):
    try:
        s = x.decode("ascii")
        if all(32 <= ord(ch) < 127 for ch in s):
            return s
    except UnicodeDecodeError:
        pass
    return "hex:" + x.hex()


def flow_kv(a, out):
    mf = _mf()
    mf.initialize(0)
    sh = Shim(a.shim)
    port, ok = sh.connect(a.url, a.world_size, 0)
    res = {"register_url": port, "connected": ok}
    checks = []

    def chk(name, got, exp):
        checks.append({"step": name, "got": got, "expected": exp, "ok": got == exp})

    if not ok:
        chk("connect", False, True)
        return res, checks
    tag = b"kvflow/%d/" % os.getpid()
    K = lambda s: tag + s
    chk("set", sh.set(K(b"k"), b"v1"), 0)
    r, v = sh.get(K(b"k"), 100); chk("get_hit", [r, _b(v)], [0, "v1"])
    t = time.monotonic(); r, v = sh.get(K(b"missing"), 300); dt = time.monotonic() - t
    chk("get_miss_300ms", r, -601); chk("get_miss_waited_>=0.29s", dt >= 0.29, True)
    chk("get_miss_not_too_late_<3s", dt < 3.0, True)
    r, v = sh.get(K(b"missing"), 0); chk("get_miss_0ms", r, -404)
    chk("add_new", list(sh.add(K(b"cnt"), 5)), [0, 5])
    chk("add_neg", list(sh.add(K(b"cnt"), -7)), [0, -2])
    r, v = sh.get(K(b"cnt"), 100); chk("get_cnt", [r, _b(v)], [0, "-2"])
    chk("append_new", list(sh.append(K(b"ap"), b"ab")), [0, 2])
    chk("append_more", list(sh.append(K(b"ap"), b"cde")), [0, 5])
    r, v = sh.get(K(b"ap"), 100); chk("get_ap", [r, _b(v)], [0, "abcde"])
    r, v = sh.cas(K(b"ck"), b"", b"x"); chk("cas_absent", [r, _b(v)], [0, "x"])
    r, v = sh.cas(K(b"ck"), b"x", b"y"); chk("cas_match", [r, _b(v)], [0, "y"])
    r, v = sh.cas(K(b"ck"), b"zzz", b"w"); chk("cas_mismatch", [r, _b(v)], [-405, "y"])  # client maps a 2-value CAS reply to -405
    r, v = sh.get(K(b"ck"), 100); chk("get_ck", [r, _b(v)], [0, "y"])
    chk("write_0", sh.write(K(b"wk"), b"hello", 0), 0)
    chk("write_8", sh.write(K(b"wk"), b"XY", 8), 0)
    r, v = sh.get(K(b"wk"), 100); chk("get_wk", [r, v.hex()], [0, (b"hello\0\0\0XY").hex()])
    sh.set(K(b"p/a"), b"1"); sh.set(K(b"p/b"), b"\x00\xff")
    r, m = sh.prefix(K(b"p/")); chk("prefix", [r, sorted([_b(k), _b(v)] for k, v in m.items())],
                                     [0, sorted([[_b(K(b"p/a")), "1"], [_b(K(b"p/b")), "hex:00ff"]])])
    kb, vb = K(b"bin\x00\x01"), bytes(range(256))
    chk("set_binary", sh.set(kb, vb), 0)
    r, v = sh.get(kb, 100); chk("get_binary", [r, v == vb], [0, True])
    chk("remove_hit", sh.remove(K(b"k")), 0)
    chk("remove_miss", sh.remove(K(b"k")), -404)
    r, v = sh.get(K(b"k"), 0); chk("get_after_remove", r, -404)
    chk("query_alive_self", list(sh.query_alive(0)), [0, 1])
    r, alive = sh.query_alive(a.world_size + 5 if a.world_size + 5 < 1024 else 1000)
    chk("query_alive_other", [r, alive], [0, 0])
    # WATCH: register on an absent key, then SET it from the same link.
    events = []
    ev = threading.Event()

    def cb(ctx, result, kp, kl, vp, vl):
        events.append([result, _b(ctypes.string_at(kp, kl)), _b(ctypes.string_at(vp, vl) if vl else b"")])
        ev.set()
    cbf = sh.CB(cb)
    wid = ctypes.c_uint32(0)
    r = sh.L.rs_watch(sh.h, K(b"w"), len(K(b"w")), cbf, None, ctypes.byref(wid))
    chk("watch", r, 0)
    chk("set_watched", sh.set(K(b"w"), b"w1"), 0)
    ev.wait(5)
    chk("watch_event", events[:1], [[0, _b(K(b"w")), "w1"]])
    chk("unwatch", sh.L.rs_unwatch(sh.h, wid.value), 0)
    res["events"] = events
    sh.destroy(a.url)
    return res, checks


def flow_parked_get(a, out):
    mf = _mf()
    mf.initialize(0)
    sh = Shim(a.shim)
    port, ok = sh.connect(a.url, a.world_size, 0)
    checks = [{"step": "connect", "got": ok, "expected": True, "ok": ok}]
    if not ok:
        return {}, checks
    key = b"parked/%d" % os.getpid()
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), a.url, "--child", "setter",
                              "--shim", a.shim, "--world-size", str(a.world_size), "--key", key.decode()],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    t = time.monotonic()
    r, v = sh.get(key, 5000)
    dt = time.monotonic() - t
    try:
        cout, _ = child.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        child.kill(); cout = b""
    checks.append({"step": "parked_get", "got": [r, _b(v)], "expected": [0, "late"], "ok": [r, _b(v)] == [0, "late"]})
    checks.append({"step": "woken_before_timeout", "got": dt < 4.5, "expected": True, "ok": dt < 4.5})
    setter = json.loads(cout.decode().strip().splitlines()[-1]) if cout.strip() else {}
    checks.append({"step": "setter", "got": setter, "expected": {"connected": True, "set": 0},
                   "ok": setter == {"connected": True, "set": 0}})
    sh.destroy(a.url)
    return {"waited_s": round(dt, 3)}, checks


def child_setter(a):
    out = _redirect_native_stdout()
    mf = _mf(); mf.initialize(0)
    sh = Shim(a.shim)
    _, ok = sh.connect(a.url, a.world_size, 1)
    res = {"connected": ok}
    if ok:
        time.sleep(0.7)
        res["set"] = sh.set(a.key.encode(), b"late")
        time.sleep(0.3)
    out.write(json.dumps(res) + "\n"); out.flush()
    os._exit(0)


def flow_bm(a, out, auto):
    mf = _mf()
    from memfabric_hybrid import bm
    mf.initialize(0)
    c = bm.BmConfig()
    c.start_store = False
    c.init_timeout = 10; c.create_timeout = 10; c.operation_timeout = 10
    if not auto:
        c.auto_ranking = False; c.rank_id = 0
    t = time.monotonic()
    r = bm.initialize(a.url, a.world_size, 0, c)
    msg = mf.get_last_err_msg()
    res = {"rc": r, "err": msg, "s": round(time.monotonic() - t, 3)}
    # Against the reference store: the store part succeeds, then hybm_init fails (no Ascend driver).
    ok = r == -1 and "init hybm failed" in msg
    if r == 0:
        bm.uninitialize()
    return res, [{"step": "bm_init_reaches_hybm", "got": [r, msg], "expected": [-1, "init hybm failed..."], "ok": ok}]


def flow_shm(a, out):
    mf = _mf()
    from memfabric_hybrid import shm
    c = shm.ShmConfig()
    c.start_store = False
    c.init_timeout = 10; c.create_timeout = 10; c.operation_timeout = 10
    t = time.monotonic()
    r = shm.initialize(a.url, a.world_size, 0, 0, c)
    msg = mf.get_last_err_msg()
    res = {"rc": r, "err": msg, "s": round(time.monotonic() - t, 3)}
    ok = r == -1 and "init hybm failed" in msg
    if r == 0:
        shm.uninitialize()
    return res, [{"step": "shm_init_reaches_hybm", "got": [r, msg], "expected": [-1, "init hybm failed..."], "ok": ok}]


def flow_ws_mismatch(a, out):
    mf = _mf(); mf.initialize(0)
    sh = Shim(a.shim)
    # fix the world size first with a normal client (no-op if already fixed to the same value)
    _, ok1 = sh.connect(a.url, a.world_size, 0)
    sh.destroy(a.url)
    sh2 = Shim(a.shim)
    _, ok2 = sh2.connect(a.url, a.world_size + 1, 1, retry=1)
    return {}, [{"step": "same_ws_connects", "got": ok1, "expected": True, "ok": ok1},
                {"step": "other_ws_refused", "got": ok2, "expected": False, "ok": ok2 is False}]


def run_child(a):
    out = _redirect_native_stdout()
    t = time.monotonic()
    try:
        if a.child == "kv":
            res, checks = flow_kv(a, out)
        elif a.child == "parked_get":
            res, checks = flow_parked_get(a, out)
        elif a.child == "bm_explicit":
            res, checks = flow_bm(a, out, False)
        elif a.child == "bm_auto":
            res, checks = flow_bm(a, out, True)
        elif a.child == "shm":
            res, checks = flow_shm(a, out)
        elif a.child == "ws_mismatch":
            res, checks = flow_ws_mismatch(a, out)
        else:
            raise SystemExit("unknown flow " + a.child)
        ok = all(c["ok"] for c in checks)
        res.update({"ok": ok, "checks": checks})
    except Exception as e:  # noqa: BLE001
        res = {"ok": False, "exception": repr(e)}
    res["child_s"] = round(time.monotonic() - t, 3)
    out.write(json.dumps(res) + "\n"); out.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the reference's atexit teardown


# ----------------------------------------------------------------------------- parent side
def build_shim(build_dir):
    import memfabric_hybrid  # noqa: F401  (only to find the lib dir; does not start anything)
    lib = os.path.join(os.path.dirname(memfabric_hybrid.__file__), "lib")
    src = os.path.join(HERE, "ref_store_shim.cpp")
    os.makedirs(build_dir, exist_ok=True)
    so = os.path.join(build_dir, "libref_store_shim.so")
    if os.path.exists(so) and os.path.getmtime(so) >= os.path.getmtime(src):
        return so, None
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        return None, "no C++ compiler (g++) found"
    cmd = [cxx, "-std=c++17", "-O1", "-fPIC", "-shared", "-D_GLIBCXX_USE_CXX11_ABI=0", src, "-L" + lib,
           "-l:libmf_smem.so", "-l:libmf_hybm_core.so", "-Wl,-rpath," + lib, "-Wl,--no-undefined", "-o", so + ".tmp"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        return None, "shim build failed: " + p.stderr[-2000:]
    os.replace(so + ".tmp", so)
    return so, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--flows", default=",".join(ALL_FLOWS))
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--flow-timeout", type=float, default=30.0)
    ap.add_argument("--build-dir", default=os.path.join(tempfile.gettempdir(), "smem-interop-shim-%d" % os.getuid()))
    ap.add_argument("--child")
    ap.add_argument("--shim")
    ap.add_argument("--key")
    a = ap.parse_args()
    if a.child == "setter":
        return child_setter(a)
    if a.child:
        return run_child(a)

    t0 = time.monotonic()
    summary = {"url": a.url, "world_size": a.world_size, "flows": {}}
    shim, err = build_shim(a.build_dir)
    summary["shim"] = shim or err
    for name in [f for f in a.flows.split(",") if f]:
        if name not in ALL_FLOWS:
            summary["flows"][name] = {"ok": False, "error": "unknown flow"}
            continue
        if name in ("kv", "parked_get", "ws_mismatch") and not shim:
            summary["flows"][name] = {"ok": False, "error": err}
            continue
        cmd = [sys.executable, os.path.abspath(__file__), a.url, "--child", name, "--world-size", str(a.world_size)]
        if shim:
            cmd += ["--shim", shim]
        t = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            cout, cerr = p.communicate(timeout=a.flow_timeout)
            lines = cout.decode(errors="replace").strip().splitlines()
            try:
                r = json.loads(lines[-1])
            except (IndexError, ValueError):
                r = {"ok": False, "error": "no result", "returncode": p.returncode,
                     "stderr_tail": cerr.decode(errors="replace")[-1500:]}
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.communicate()
            r = {"ok": False, "error": "timeout after %.0fs" % a.flow_timeout}
        r["returncode"] = p.returncode
        r["wall_s"] = round(time.monotonic() - t, 3)
        summary["flows"][name] = r
    summary["ok"] = bool(summary["flows"]) and all(f.get("ok") for f in summary["flows"].values())
    summary["total_s"] = round(time.monotonic() - t0, 3)
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
