"""Bodies of the rank processes of the suite (imported by spawned children)."""

import ctypes
import threading
import time

from conftest import report

MIB = 1 << 20
WAIT_S = 60  # bound of every cross-process wait


def bm_rank(rank, world, url, barrier, q):
    """One rank of a 2-rank BM pool: numpy / bytearray / int addresses, H2G and G2H both ways,
    a batch of 16 KiB blocks, error returns, leave/destroy."""

    def body():
        import numpy as np

        import smem
        from smem.bm import BmCopyType as T, BmMemType as M

        assert smem.initialize() == 0
        cfg = smem.bm.BmConfig()
        cfg.rank_id = rank
        cfg.init_timeout = cfg.create_timeout = cfg.operation_timeout = WAIT_S
        assert smem.bm.initialize(url, world, 0, cfg) == 0, smem.get_last_err_msg()
        assert smem.bm.bm_rank_id() == rank
        pool = smem.bm.create(0, 4 * MIB)
        assert pool.local_mem_size(M.HOST) == 4 * MIB and pool.local_mem_size(M.DEVICE) == 0
        assert pool.join() == 0, smem.get_last_err_msg()
        barrier.wait(WAIT_S)  # every window is joined

        peer = (rank + 1) % world
        mine = pool.peer_rank_ptr(rank, M.HOST)
        theirs = pool.peer_rank_ptr(peer, M.HOST)
        assert mine and theirs and mine != theirs
        rng = np.random.default_rng(rank)
        data = rng.integers(0, 256, size=MIB, dtype=np.uint8)
        # numpy array as the source (buffer protocol), an int GVA as the destination.
        assert pool.copy_data(data, theirs, data.nbytes, T.H2G) == 0, smem.get_last_err_msg()
        # A batch of 16 KiB blocks after the first MiB, from one bytearray.
        blocks = bytearray(rng.integers(0, 256, size=64 * 16384, dtype=np.uint8).tobytes())
        view = memoryview(blocks)
        srcs = [view[i * 16384 : (i + 1) * 16384] for i in range(64)]
        dsts = [theirs + MIB + i * 16384 for i in range(64)]
        assert pool.copy_data_batch(srcs, dsts, [16384] * 64, 64, T.H2G) == 0, smem.get_last_err_msg()
        barrier.wait(WAIT_S)  # every rank wrote its peer's window

        writer = (rank - 1) % world
        expect = np.random.default_rng(writer).integers(0, 256, size=MIB, dtype=np.uint8)
        got = np.empty(MIB, dtype=np.uint8)
        assert pool.copy_data(mine, got, MIB, T.G2H) == 0, smem.get_last_err_msg()
        assert np.array_equal(got, expect)
        expect_blocks = np.random.default_rng(writer)
        expect_blocks.integers(0, 256, size=MIB, dtype=np.uint8)
        expect_blocks = expect_blocks.integers(0, 256, size=64 * 16384, dtype=np.uint8).tobytes()
        out = bytearray(64 * 16384)
        assert pool.copy_data(mine + MIB, out, len(out), T.G2H) == 0
        assert bytes(out) == expect_blocks
        # Reading the peer's window directly gives what this rank wrote there.
        back = bytearray(MIB)
        assert pool.copy_data(theirs, back, MIB, T.G2H) == 0
        assert bytes(back) == data.tobytes()

        # Error returns: a range over the window's end, size 0, a too-small buffer, a
        # read-only destination, a wrong address type.
        assert pool.copy_data(data, theirs + 4 * MIB - 10, 100, T.H2G) == smem.SM_INVALID_PARAM
        assert "SM_INVALID_PARAM" in smem.get_last_err_msg()
        assert pool.copy_data(data, theirs, 0, T.H2G) == smem.SM_INVALID_PARAM
        for bad, exc in ((lambda: pool.copy_data(bytearray(8), theirs, 16, T.H2G), ValueError),
                         (lambda: pool.copy_data(theirs, b"12345678", 8, T.G2H), TypeError),
                         (lambda: pool.copy_data("x", theirs, 8, T.H2G), TypeError)):
            try:
                bad()
            except exc:
                pass
            else:
                raise AssertionError(f"expected {exc.__name__}")
        assert pool.peer_rank_ptr(world, M.HOST) == 0
        assert pool.copy_data(data, theirs, 8, T.H2G, 2) == smem.SM_INVALID_PARAM  # unknown flag

        # SPEC 6.1: rank by GVA, registered user memory, asynchronous copies, G2G.
        assert pool.get_rank_id_by_gva(theirs + 5) == peer and pool.get_rank_id_by_gva(mine) == rank
        assert pool.get_rank_id_by_gva(16) == 0xFFFFFFFF
        reg = np.zeros(MIB, dtype=np.uint8)
        assert pool.register(reg, reg.nbytes) == 0, smem.get_last_err_msg()
        assert pool.register(reg.ctypes.data + 4096, 4096) == smem.SM_INVALID_PARAM  # overlaps
        assert pool.unregister(reg) == 0 and pool.unregister(reg) == smem.SM_OBJECT_NOT_EXISTS
        flag = smem.bm.SMEM_ASYNC_COPY_FLAG
        assert pool.copy_data(data, theirs + 2 * MIB, MIB, T.H2G, flag) == 0, smem.get_last_err_msg()
        assert pool.copy_data_batch(srcs, [theirs + 3 * MIB + i * 16384 for i in range(64)], [16384] * 64, 64, T.H2G, flag) == 0
        assert pool.wait() == 0, smem.get_last_err_msg()
        back = bytearray(MIB)
        assert pool.copy_data(theirs + 2 * MIB, back, MIB, T.G2H) == 0 and bytes(back) == data.tobytes()
        assert pool.copy_data(theirs + 3 * MIB, back, MIB, T.G2H) == 0 and bytes(back) == bytes(blocks)
        # G2G: this rank's window (written by the writer) into the peer's last 4 KiB.
        assert pool.copy_data(mine, theirs + 4 * MIB - 4096, 4096, T.G2G) == 0, smem.get_last_err_msg()
        last = bytearray(4096)
        assert pool.copy_data(theirs + 4 * MIB - 4096, last, 4096, T.G2H) == 0
        assert bytes(last) == expect[:4096].tobytes()

        barrier.wait(WAIT_S)  # nobody touches the windows any more
        assert pool.leave() == 0, smem.get_last_err_msg()
        pool.destroy()
        pool.destroy()  # idempotent
        barrier.wait(WAIT_S)  # rank 0 hosts the store: it goes last
        smem.bm.uninitialize()

    report(rank, q, body)


def shm_rank(rank, world, url, barrier, gil_probe, q):
    """One rank of a 3-rank SHM object: windows by plain loads/stores, barrier, all_gather,
    context, topology; rank 0 proves its barrier call lets other Python threads run."""

    def body():
        import smem

        cfg = smem.shm.ShmConfig()
        cfg.init_timeout = cfg.create_timeout = cfg.operation_timeout = WAIT_S
        assert smem.shm.initialize(url, world, rank, 0, cfg) == 0, smem.get_last_err_msg()
        size = 2 * MIB
        obj = smem.shm.create(0, world, rank, size)
        assert (obj.local_rank, obj.rank_size) == (rank, world) and obj.gva
        pattern = bytes([rank + 1]) * 4096 + rank.to_bytes(4, "little") * 1024
        ctypes.memmove(obj.gva + rank * size, pattern, len(pattern))

        if rank == 0:
            # The others enter the barrier only after this thread ran while the barrier
            # call below was blocked: with the GIL held there, it would never get here.
            done = threading.Event()
            ticks = [0]

            def waiter():
                ticks.append(obj.barrier())
                done.set()

            t = threading.Thread(target=waiter)
            t.start()
            deadline = time.monotonic() + WAIT_S
            while not done.is_set() and ticks[0] < 1000 and time.monotonic() < deadline:
                ticks[0] += 1
                time.sleep(0.001)
            gil_probe.set()
            t.join(WAIT_S)
            assert ticks[0] >= 1000 and ticks[-1] == 0, ticks[-1]
        else:
            assert gil_probe.wait(WAIT_S), "rank 0 never ran Python code during its barrier"
            assert obj.barrier() == 0, smem.get_last_err_msg()

        for r in range(world):
            want = bytes([r + 1]) * 4096 + r.to_bytes(4, "little") * 1024
            assert ctypes.string_at(obj.gva + r * size, len(want)) == want, f"window {r}"
        gathered = obj.all_gather(bytes([rank]) * 8)
        assert gathered == b"".join(bytes([r]) * 8 for r in range(world))
        if rank == 0:
            obj.set_context(b"kv-layout:v1")
        assert obj.barrier() == 0
        assert obj.get_context() == b"kv-layout:v1"
        for r in range(world):
            reach = obj.topology_can_reach(r)
            assert reach >= 0 and reach & int(smem.shm.ShmDataOpType.MTE), reach
        assert obj.topology_can_reach(world) == smem.SM_INVALID_PARAM
        assert obj.query_support_data_operation() & int(smem.shm.ShmDataOpType.MTE)
        try:
            obj.all_gather(b"")
        except smem.SmemError as e:
            assert e.code == smem.SM_INVALID_PARAM
        else:
            raise AssertionError("all_gather of 0 bytes must fail")
        assert obj.barrier() == 0
        assert obj.destroy() == 0, smem.get_last_err_msg()
        barrier.wait(WAIT_S)  # rank 0 hosts the store: it goes last
        smem.shm.uninitialize()

    report(rank, q, body)
