"""smem: global shared memory for Python (SPEC 6.3), over libsmem.

The surface of the reference package ``memfabric_hybrid`` (and ``mf_adapter``), so code written
for it runs with ``import smem as mf``:

- top level: initialize, uninitialize, set_log_level, set_extern_logger, get_last_err_msg,
  get_and_clear_last_err_msg, set_ssl_option, create_config_store;
- ``smem.bm``: BM pools (BigMemory); ``smem.shm``: symmetric memory (ShareMemory);
- ``smem.TransferEngine``: point-to-point reads/writes of registered memory (KV-cache blocks).

Conventions: calls that return an int return 0 or a negative ``SM_*`` code (the message is in
``get_last_err_msg()``); calls that return an object raise :class:`SmemError` (a
``RuntimeError`` with ``.code``); wrong argument types raise ``TypeError``. Addresses are ints,
or any object with the buffer protocol (bytearray, memoryview, numpy array: its first byte).
The GIL is released in every call that waits or copies.
"""

import atexit as _atexit
from enum import IntEnum as _IntEnum

from smem import _native
from smem._error import *  # noqa: F401,F403  (SmemError and the SM_* codes)
from smem._error import SmemError
from smem import bm, shm

initialize = _native.initialize
uninitialize = _native.uninitialize
set_log_level = _native.set_log_level
set_extern_logger = _native.set_extern_logger
get_last_err_msg = _native.get_last_err_msg
get_and_clear_last_err_msg = _native.get_and_clear_last_err_msg
set_ssl_option = _native.set_ssl_option
set_conf_store_tls = _native.set_conf_store_tls
create_config_store = _native.create_config_store


class TransferOpcode(_IntEnum):
    """Direction of a transfer (the reference's ``TransferOpcode``)."""

    Read = 0
    Write = 1


class TransDataOpType(_IntEnum):
    """Data engines of a TransferEngine (bits). HOST_TCP is ours: the TCP transport, always
    used as the fallback between processes."""

    SDMA = 1 << 0
    HOST_RDMA = 1 << 1
    HOST_TCP = 1 << 2
    DEVICE_RDMA = 1 << 3


class TransferEngine(_native.TransferEngine):
    __doc__ = _native.TransferEngine.__doc__
    #: The reference's callers reach the enums through the class.
    TransDataOpType = TransDataOpType
    TransferOpcode = TransferOpcode


@_atexit.register
def _drop_logger():
    # The runtime's threads must not call into a finalizing interpreter.
    try:
        _native.set_extern_logger(None)
    except Exception:  # noqa: BLE001 - best effort at exit
        pass


__all__ = [
    "initialize",
    "uninitialize",
    "set_log_level",
    "set_extern_logger",
    "get_last_err_msg",
    "get_and_clear_last_err_msg",
    "set_ssl_option",
    "set_conf_store_tls",
    "create_config_store",
    "SmemError",
    "TransferEngine",
    "TransferOpcode",
    "TransDataOpType",
    "bm",
    "shm",
]
