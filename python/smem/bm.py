"""BM pools (``memfabric_hybrid.bm``): every rank contributes DRAM (and HBM) to a pool whose
windows share one global virtual address range; data moves with ``BigMemory.copy_data``.

    cfg = smem.bm.BmConfig(); cfg.rank_id = rank
    assert smem.bm.initialize("tcp://127.0.0.1:5124", world_size, 0, cfg) == 0
    pool = smem.bm.create(0, 64 << 20)         # 64 MiB of DRAM per rank
    pool.join()
    peer = pool.peer_rank_ptr(1, smem.bm.BmMemType.HOST)
    pool.copy_data(numpy_array, peer, numpy_array.nbytes, smem.bm.BmCopyType.H2G)
"""

from enum import IntEnum

from smem import _native

_n = _native.bm

initialize = _n.initialize
uninitialize = _n.uninitialize
bm_rank_id = _n.bm_rank_id
create = _n.create
BigMemory = _n.BigMemory

#: Flag of copy_data / copy_data_batch: enqueue and return; ``BigMemory.wait()`` completes it.
SMEM_ASYNC_COPY_FLAG = 1 << 0


class BmCopyType(IntEnum):
    """Direction of a copy: L(ocal device) / H(ost) memory and G(lobal) windows."""

    L2G = 0
    G2L = 1
    G2H = 2
    H2G = 3
    G2G = 8


class BmDataOpType(IntEnum):
    """Data engines of a pool (bits); SDMA: same-host copies, HOST_TCP: other hosts."""

    SDMA = 1 << 0
    HOST_RDMA = 1 << 1
    HOST_TCP = 1 << 2
    DEVICE_RDMA = 1 << 3


class BmMemType(IntEnum):
    """Part of a window: DEVICE = its HBM part (first), HOST = its DRAM part."""

    LOCAL_DEVICE = 0
    LOCAL_HOST = 1
    DEVICE = 2
    HOST = 3


class BmConfig:
    """Settings of ``initialize`` (``smem_bm_config_t``); defaults of ``smem_bm_config_init``.

    Fields: init_timeout, create_timeout, operation_timeout (seconds), start_store,
    start_store_only, dynamic_world_size, unified_address_space, auto_ranking, rank_id, flags.
    """

    __slots__ = (
        "init_timeout",
        "create_timeout",
        "operation_timeout",
        "start_store",
        "start_store_only",
        "dynamic_world_size",
        "unified_address_space",
        "auto_ranking",
        "rank_id",
        "flags",
    )

    def __init__(self):
        for k, v in _n.config_defaults().items():
            setattr(self, k, v)

    def set_nic(self, nic):
        """Accepted for compatibility: the network interface is chosen by the runtime."""
        del nic

    def __repr__(self):
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"BmConfig({fields})"


__all__ = [
    "initialize",
    "uninitialize",
    "bm_rank_id",
    "create",
    "BigMemory",
    "BmConfig",
    "BmCopyType",
    "BmDataOpType",
    "BmMemType",
    "SMEM_ASYNC_COPY_FLAG",
]
