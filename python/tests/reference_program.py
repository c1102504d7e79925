"""A program written against the reference's Python surface (memfabric_hybrid 1.3.0 and its
mf_adapter TransferEngine), run unchanged except for its import line:

    import memfabric_hybrid as mf      ->      import smem as mf

Only the reference's names, argument names and return conventions are used (int addresses from
numpy / ctypes, return codes checked against 0). Three parts, each in its own processes:
BM with 2 ranks, SHM with 3 ranks, a TransferEngine pair. Exit code 0 when all passed.

    python reference_program.py [bm|shm|te ...]
"""

import ctypes
import multiprocessing as mp
import socket
import sys

import numpy as np

import smem as mf

MB = 1 << 20


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(rc, what):
    if rc != 0:
        raise RuntimeError(f"{what} failed: {rc} {mf.get_last_err_msg()}")


def bm_rank(rank, url, bar):
    cfg = mf.bm.BmConfig()
    cfg.auto_ranking = False
    cfg.rank_id = rank
    check(mf.bm.initialize(url, 2, 0, cfg), "bm.initialize")
    big = mf.bm.create(0, 8 * MB, 0, mf.bm.BmDataOpType.SDMA, 0)
    check(big.join(0), "join")
    bar.wait(60)
    src = np.full(MB, rank + 1, dtype=np.uint8)
    peer = big.peer_rank_ptr(1 - rank, mf.bm.BmMemType.HOST)
    check(big.copy_data(src.ctypes.data, peer, MB, mf.bm.BmCopyType.H2G, 0), "copy H2G")
    bar.wait(60)
    dst = np.zeros(MB, dtype=np.uint8)
    check(big.copy_data(big.peer_rank_ptr(rank, mf.bm.BmMemType.HOST), dst.ctypes.data, MB, mf.bm.BmCopyType.G2H), "copy G2H")
    assert (dst == 2 - rank).all(), "bm: wrong bytes"
    bar.wait(60)
    check(big.leave(0), "leave")
    big.destroy()
    bar.wait(60)
    mf.bm.uninitialize()


def shm_rank(rank, url, bar):
    cfg = mf.shm.ShmConfig()
    check(mf.shm.initialize(url, 3, rank, 0, cfg), "shm.initialize")
    size = 2 * MB
    s = mf.shm.create(0, 3, rank, size, mf.shm.ShmDataOpType.MTE, 0)
    ctypes.memset(s.gva + rank * size, rank + 7, 4096)
    check(s.barrier(), "barrier")
    for r in range(3):
        assert ctypes.string_at(s.gva + r * size, 4096) == bytes([r + 7]) * 4096, "shm: window"
    assert s.all_gather(bytes([rank])) == bytes([0, 1, 2]), "shm: all_gather"
    assert s.local_rank == rank and s.rank_size == 3
    s.set_context(b"ctx")
    check(s.barrier(), "barrier")
    check(s.destroy(0), "shm destroy")
    bar.wait(60)
    mf.shm.uninitialize(0)


def te_decode(url, up, q, done, decode_port):
    up.wait(60)
    engine = mf.TransferEngine()
    check(engine.initialize(url, "127.0.0.1:%d" % decode_port, "Decode", 0), "te.initialize")
    kv = np.zeros(64 * 32768, dtype=np.uint8)
    check(engine.register_memory(kv.ctypes.data, kv.nbytes), "register_memory")
    q.put(kv.ctypes.data)
    done.wait(120)
    for i in range(64):
        assert (kv[i * 32768 : (i + 1) * 32768] == i).all(), "te: block %d" % i
    engine.destroy()


def te_prefill(url, up, q, done, decode_port):
    check(mf.create_config_store(url), "create_config_store")
    up.set()
    engine = mf.TransferEngine()
    check(engine.initialize(url, "127.0.0.1:%d" % port(), "Prefill", 0, mf.TransferEngine.TransDataOpType.SDMA), "te.initialize")
    remote = q.get(timeout=60)
    blocks = np.repeat(np.arange(64, dtype=np.uint8), 32768)
    peer = "127.0.0.1:%d" % decode_port
    srcs = [blocks.ctypes.data + i * 32768 for i in range(64)]
    dsts = [remote + i * 32768 for i in range(64)]
    check(engine.batch_transfer_sync_write(peer, srcs, dsts, [32768] * 64), "batch_transfer_sync_write")
    back = np.zeros(32768, dtype=np.uint8)
    check(engine.transfer_sync_read(peer, back.ctypes.data, remote + 5 * 32768, 32768), "transfer_sync_read")
    assert (back == 5).all(), "te: read back"
    done.set()
    engine.destroy()


def run(procs):
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(120)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    codes = [p.exitcode for p in procs]
    if any(c != 0 for c in codes):
        raise SystemExit(f"a process failed: exit codes {codes}")


def main(parts):
    ctx = mp.get_context("spawn")
    if "bm" in parts:
        url, bar = "tcp://127.0.0.1:%d" % port(), ctx.Barrier(2)
        run([ctx.Process(target=bm_rank, args=(r, url, bar)) for r in range(2)])
        print("bm: 2 ranks OK")
    if "shm" in parts:
        url, bar = "tcp://127.0.0.1:%d" % port(), ctx.Barrier(3)
        run([ctx.Process(target=shm_rank, args=(r, url, bar)) for r in range(3)])
        print("shm: 3 ranks OK")
    if "te" in parts:
        url, up, q, done = "tcp://127.0.0.1:%d" % port(), ctx.Event(), ctx.Queue(), ctx.Event()
        decode_port = port()
        run([
            ctx.Process(target=te_decode, args=(url, up, q, done, decode_port)),
            ctx.Process(target=te_prefill, args=(url, up, q, done, decode_port)),
        ])
        print("te: transfer engine pair OK")


if __name__ == "__main__":
    main(sys.argv[1:] or ["bm", "shm", "te"])
