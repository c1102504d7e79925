"""Symmetric memory (``memfabric_hybrid.shm``): every rank contributes a window of the same
size; same-host windows are mapped read/write in every member, so plain loads and stores (e.g.
``ctypes.memmove`` to ``obj.gva + r * size``) reach them; barrier / all_gather coordinate.

    cfg = smem.shm.ShmConfig()
    assert smem.shm.initialize("tcp://127.0.0.1:5125", 3, rank, 0, cfg) == 0
    obj = smem.shm.create(0, 3, rank, 2 << 20)
    obj.barrier(); everyone = obj.all_gather(b"x")
"""

from enum import IntEnum

from smem import _native

_n = _native.shm

initialize = _n.initialize
uninitialize = _n.uninitialize
create = _n.create
ShareMemory = _n.ShareMemory


class ShmDataOpType(IntEnum):
    """How a rank reaches others' windows (bits): MTE/SDMA same host, RDMA other hosts."""

    MTE = 1 << 0
    SDMA = 1 << 1
    RDMA = 1 << 2


class ShmConfig:
    """Settings of ``initialize`` (``smem_shm_config_t``); defaults of ``smem_shm_config_init``.

    Fields: init_timeout, create_timeout, operation_timeout (seconds), start_store, flags.
    """

    __slots__ = ("init_timeout", "create_timeout", "operation_timeout", "start_store", "flags")

    def __init__(self):
        for k, v in _n.config_defaults().items():
            setattr(self, k, v)

    def __repr__(self):
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"ShmConfig({fields})"


__all__ = ["initialize", "uninitialize", "create", "ShareMemory", "ShmConfig", "ShmDataOpType"]
