#!/usr/bin/env python3
"""Hand a paged KV cache from a "prefill" process to a "decode" process, block by block,
through smem's TransferEngine (the disaggregated prefill/decode pattern of SGLang and vLLM).

Both processes hold a paged KV cache (numpy, fp16): per layer a K and a V array of shape
[num_blocks, block_tokens, kv_heads, head_dim]. The prefill process computed a request whose
tokens sit in some of its blocks (its block table); the decode process allocated other blocks
for it (its own block table). Prefill pushes every (layer, K/V, block) to the decode process's
matching block with batch writes, one batch per layer; decode then checks every byte.

    python examples/kv_transfer.py                  # both processes on this host
    python examples/kv_transfer.py --layers 16 --blocks 256 --iters 5

It starts the config store itself (smem.create_config_store in the prefill process) on a free
loopback port; --store-url names another one (e.g. one run by smem-store).
"""

import argparse
import multiprocessing as mp
import socket
import sys
import time

import numpy as np


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cache(a):
    shape = (a.blocks, a.block_tokens, a.kv_heads, a.head_dim)
    return [(np.zeros(shape, np.float16), np.zeros(shape, np.float16)) for _ in range(a.layers)]


def fill_prefill_cache(cache, table):
    """Deterministic 'computed' KV values in the prefill blocks of the request."""
    for layer, (k, v) in enumerate(cache):
        for j, b in enumerate(table):
            rng = np.random.default_rng(layer * 100_003 + j)
            k[b] = rng.standard_normal(k.shape[1:], dtype=np.float32).astype(np.float16)
            v[b] = -k[b]


def decode_main(a, store_up, info, done, result):
    import smem

    try:
        if not store_up.wait(60):
            raise RuntimeError("the config store never came up")
        engine = smem.TransferEngine()
        rc = engine.initialize(a.store_url, a.decode_id, "Decode", 0)
        if rc != 0:
            raise smem.SmemError(rc, smem.get_last_err_msg())
        cache = make_cache(a)
        for k, v in cache:  # make every block a legal destination for the prefill engine
            for arr in (k, v):
                if engine.register_memory(arr.ctypes.data, arr.nbytes) != 0:
                    raise RuntimeError(smem.get_last_err_msg())
        # The decode side's blocks for this request (a different, scattered block table).
        table = np.random.default_rng(7).permutation(a.blocks)[: a.request_blocks].tolist()
        info.put(([(k.ctypes.data, v.ctypes.data) for k, v in cache], table, cache[0][0][0].nbytes))
        if not done.wait(600):
            raise RuntimeError("prefill never finished")
        expect = make_cache(a)
        fill_prefill_cache(expect, list(range(a.request_blocks)))
        for layer in range(a.layers):
            for kv in (0, 1):
                got = cache[layer][kv][table]
                want = expect[layer][kv][: a.request_blocks]
                if not np.array_equal(got, want):
                    raise AssertionError(f"layer {layer} {'KV'[kv]}: blocks differ")
        engine.destroy()
        result.put(("decode", "verified %d layers x %d blocks x K/V" % (a.layers, a.request_blocks)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        result.put(("decode", e))


def prefill_main(a, store_up, info, done, result):
    import smem

    try:
        if a.start_store and smem.create_config_store(a.store_url) != 0:
            raise RuntimeError(smem.get_last_err_msg())
        store_up.set()
        engine = smem.TransferEngine()
        rc = engine.initialize(a.store_url, a.prefill_id, "Prefill", 0)
        if rc != 0:
            raise smem.SmemError(rc, smem.get_last_err_msg())
        cache = make_cache(a)
        mine = list(range(a.request_blocks))  # prefill's block table for the request
        fill_prefill_cache(cache, mine)
        peer_layers, peer_table, block_bytes = info.get(timeout=120)
        # One batch per layer: K and V of every block of the request.
        batches = []
        for layer, (k, v) in enumerate(cache):
            pk, pv = peer_layers[layer]
            src = [k[b] for b in mine] + [v[b] for b in mine]
            dst = [pk + b * block_bytes for b in peer_table] + [pv + b * block_bytes for b in peer_table]
            batches.append((src, dst, [block_bytes] * len(src)))
        moved, times = 0, []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            for src, dst, sizes in batches:
                rc = engine.batch_transfer_sync_write(a.decode_id, src, dst, sizes)
                if rc != 0:
                    raise smem.SmemError(rc, smem.get_last_err_msg())
            times.append(time.perf_counter() - t0)
            moved = sum(sum(s) for _, _, s in batches)
        done.set()
        med = sorted(times)[len(times) // 2]
        result.put((
            "prefill",
            f"{a.layers} layers x {a.request_blocks} blocks x K/V of {block_bytes >> 10} KiB = "
            f"{moved / 2**20:.1f} MiB per hand-over, {len(batches)} batches of {len(batches[0][0])} "
            f"blocks; median {med * 1e3:.1f} ms = {moved / med / 2**30:.2f} GiB/s "
            f"(best {moved / min(times) / 2**30:.2f} GiB/s over {a.iters} runs)",
        ))
        engine.destroy()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        done.set()
        result.put(("prefill", e))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--blocks", type=int, default=256, help="blocks per layer in each cache")
    p.add_argument("--request-blocks", type=int, default=128, help="blocks of the request")
    p.add_argument("--block-tokens", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--store-url", default=None, help="default: a free loopback port, hosted by prefill")
    a = p.parse_args()
    a.start_store = a.store_url is None
    a.store_url = a.store_url or f"tcp://127.0.0.1:{free_port()}"
    a.decode_id, a.prefill_id = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    if a.request_blocks > a.blocks:
        p.error("--request-blocks must be <= --blocks")

    ctx = mp.get_context("spawn")
    store_up, done, info, result = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=decode_main, args=(a, store_up, info, done, result), daemon=True),
        ctx.Process(target=prefill_main, args=(a, store_up, info, done, result), daemon=True),
    ]
    ok = True
    try:
        for pr in procs:
            pr.start()
        for _ in procs:
            who, what = result.get(timeout=900)
            if isinstance(what, BaseException):
                ok = False
                print(f"{who}: FAILED: {what!r}", file=sys.stderr)
            else:
                print(f"{who}: {what}")
        for pr in procs:
            pr.join(60)
    finally:
        for pr in procs:
            if pr.is_alive():
                pr.kill()
                pr.join(5)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
