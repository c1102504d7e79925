"""TransferEngine pair between two real processes moving KV-cache-like blocks (64 blocks of
16-64 KiB per batch), verified on both sides."""

import multiprocessing as mp

import _engines
import smem
from conftest import free_port, run_processes


def test_transfer_engine_pair_moves_kv_blocks():
    assert smem._native.HAS_TRANSFER_ENGINE
    ctx = mp.get_context("spawn")
    url = f"tcp://127.0.0.1:{free_port()}"
    decode_id, prefill_id = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    store_up, done, addrs, released = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Event()
    run_processes(
        [
            (_engines.decode, (url, store_up, decode_id, addrs, done, released)),
            (_engines.prefill, (url, store_up, decode_id, prefill_id, addrs, done, released)),
        ]
    )
