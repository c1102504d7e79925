"""BM and SHM flows between real processes (multiprocessing, spawn)."""

import multiprocessing as mp

import _ranks
from conftest import free_port, run_processes


def test_bm_two_ranks_copy_both_ways():
    url = f"tcp://127.0.0.1:{free_port()}"
    barrier = mp.get_context("spawn").Barrier(2)
    run_processes([(_ranks.bm_rank, (r, 2, url, barrier)) for r in range(2)])


def test_shm_three_ranks_windows_barrier_allgather():
    ctx = mp.get_context("spawn")
    url = f"tcp://127.0.0.1:{free_port()}"
    barrier, probe = ctx.Barrier(3), ctx.Event()
    run_processes([(_ranks.shm_rank, (r, 3, url, barrier, probe)) for r in range(3)])
