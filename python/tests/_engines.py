"""Bodies of the transfer-engine processes (imported by spawned children): a "Decode" engine
that owns a KV-cache-like buffer and a "Prefill" engine that writes and reads its blocks."""

import numpy as np

from conftest import report

WAIT_S = 60
SLOT = 64 << 10  # one block slot of the decode buffer
SLOTS = 256
SIZES = (16 << 10, 32 << 10, 48 << 10, 64 << 10)  # block sizes, cycled


def plan(batch):
    """(slot ids, sizes) of a batch: 64 blocks of 16-64 KiB to scattered slots, each batch
    to its own slots."""
    slots = np.random.default_rng(100).permutation(SLOTS)[64 * batch : 64 * (batch + 1)]
    return [int(s) for s in slots], [SIZES[i % len(SIZES)] for i in range(64)]


def payload(batch, i, size):
    return np.random.default_rng(1000 * batch + i).integers(0, 256, size=size, dtype=np.uint8)


def decode(url, store_up, decode_id, addrs, done, released, q):
    def body():
        import smem

        assert store_up.wait(WAIT_S), "the store never came up"
        engine = smem.TransferEngine()
        assert engine.get_rpc_port() > 0
        assert engine.initialize(url, decode_id, "Decode", 0) == 0, smem.get_last_err_msg()
        kv = np.zeros((SLOTS, SLOT), dtype=np.uint8)
        # Registered by int address, as the reference's callers do ...
        assert engine.register_memory(kv.ctypes.data, kv.nbytes) == 0, smem.get_last_err_msg()
        # ... and by the buffer protocol (kept alive by the engine while registered).
        extra = bytearray(1 << 20)
        assert engine.register_memory(extra, len(extra)) == 0, smem.get_last_err_msg()
        import ctypes

        extra_addr = ctypes.addressof(ctypes.c_char.from_buffer(extra))
        addrs.put((kv.ctypes.data, extra_addr))
        assert done.wait(WAIT_S * 2), "prefill never finished"
        # Batches 0..2 were written with sync batches, 3 with an async batch.
        for batch in range(4):
            slots, sizes = plan(batch)
            for i, (s, n) in enumerate(zip(slots, sizes)):
                assert np.array_equal(kv[s, :n], payload(batch, i, n)), f"batch {batch} block {i}"
        assert bytes(extra[:4096]) == bytes(range(256)) * 16
        try:
            assert engine.unregister_memory(extra_addr) == 0, smem.get_last_err_msg()
        finally:
            # Prefill hosts the config store: it stays up until this engine no longer needs it.
            released.set()
        engine.destroy()
        engine.destroy()

    report(0, q, body)


def prefill(url, store_up, decode_id, prefill_id, addrs, done, released, q):
    def body():
        import smem

        assert smem.create_config_store(url) == 0, smem.get_last_err_msg()
        store_up.set()
        engine = smem.TransferEngine()
        # Errors before initialize and for a bad role are return codes, as in the reference.
        assert engine.transfer_sync_write(decode_id, 0, 0, 1) == smem.SM_NOT_INITIALIZED
        assert engine.initialize(url, prefill_id, "Sideways", 0) == smem.SM_INVALID_PARAM
        assert engine.initialize(url, prefill_id, "Prefill", 0, smem.TransDataOpType.SDMA) == 0, smem.get_last_err_msg()
        assert smem.TransferEngine.TransDataOpType.SDMA == 1
        base, extra = addrs.get(timeout=WAIT_S)
        local = np.zeros((64, SLOT), dtype=np.uint8)
        for batch in range(4):
            slots, sizes = plan(batch)
            for i, n in enumerate(sizes):
                local[i, :n] = payload(batch, i, n)
            peers = [base + s * SLOT for s in slots]
            if batch == 0:  # int addresses
                rc = engine.batch_transfer_sync_write(decode_id, [local[i].ctypes.data for i in range(64)], peers, sizes)
            elif batch == 1:  # buffer-protocol objects (numpy rows)
                rc = engine.batch_transfer_sync_write(decode_id, [local[i] for i in range(64)], peers, sizes)
            elif batch == 2:  # one block at a time
                rc = 0
                for i in range(64):
                    rc = rc or engine.transfer_sync_write(decode_id, local[i], peers[i], sizes[i])
            else:  # queued, then waited for
                rc = engine.batch_transfer_async_write_submit(decode_id, [local[i] for i in range(64)], peers, sizes, 0)
                assert rc == 0, smem.get_last_err_msg()
                rc = engine.wait()
            assert rc == 0, f"batch {batch}: {smem.get_last_err_msg()}"
            # Read the blocks back and compare.
            back = np.zeros_like(local)
            assert engine.batch_transfer_sync_read(decode_id, [back[i] for i in range(64)], peers, sizes) == 0, smem.get_last_err_msg()
            for i, n in enumerate(sizes):
                assert np.array_equal(back[i, :n], local[i, :n]), f"batch {batch} block {i} read back"
        one = bytearray(64)
        assert engine.transfer_sync_read(decode_id, one, base + 5 * SLOT, 64) == 0
        assert engine.transfer_async_read_submit(decode_id, one, base, 64, 0) == 0 and engine.wait() == 0
        assert engine.transfer_sync_write(decode_id, bytes(range(256)) * 16, extra, 4096) == 0, smem.get_last_err_msg()
        # A range the peer did not register: refused by the owner, nothing written.
        rc = engine.transfer_sync_write(decode_id, local[0], base + SLOTS * SLOT, 16 << 10)
        assert rc == smem.SM_INVALID_PARAM, (rc, smem.get_last_err_msg())
        assert decode_id in smem.get_last_err_msg() or "registered" in smem.get_last_err_msg()
        # Python-side argument errors.
        try:
            engine.transfer_sync_write(decode_id, "not a buffer", base, 16)
        except TypeError:
            pass
        else:
            raise AssertionError("a str buffer must raise TypeError")
        done.set()
        # This process hosts the config store: keep it up until the decode engine unregistered.
        assert released.wait(WAIT_S), "the decode engine never released its memory"
        engine.destroy()

    report(1, q, body)
