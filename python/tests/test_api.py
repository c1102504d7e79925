"""The package's surface in one process: names, defaults, error returns, types, logger."""

import inspect
import json
import os
import subprocess
import sys

import pytest

import smem
from conftest import free_port, report, run_processes


def test_top_level_names():
    for name in (
        "initialize uninitialize set_log_level set_extern_logger get_last_err_msg "
        "get_and_clear_last_err_msg set_ssl_option create_config_store TransferEngine SmemError"
    ).split():
        assert hasattr(smem, name), name
    for name in "initialize uninitialize create bm_rank_id BmConfig BmCopyType BmDataOpType BmMemType".split():
        assert hasattr(smem.bm, name), name
    for name in "initialize uninitialize create ShmConfig ShmDataOpType ShareMemory".split():
        assert hasattr(smem.shm, name), name
    assert [m.name for m in smem.bm.BmCopyType] == ["L2G", "G2L", "G2H", "H2G", "G2G"]
    assert smem.bm.BmCopyType.G2G == 8 and smem.bm.BmMemType.HOST == 3
    assert issubclass(smem.SmemError, RuntimeError)
    assert smem.initialize.__doc__ and smem.bm.BigMemory.copy_data.__doc__


def test_config_defaults_are_those_of_the_c_api():
    c = smem.bm.BmConfig()
    assert (c.init_timeout, c.create_timeout, c.operation_timeout) == (120, 120, 120)
    assert c.start_store and not c.start_store_only and not c.dynamic_world_size
    assert c.unified_address_space and not c.auto_ranking and c.rank_id == 65535 and c.flags == 0
    s = smem.shm.ShmConfig()
    assert (s.init_timeout, s.create_timeout, s.operation_timeout, s.start_store, s.flags) == (120, 120, 120, True, 0)
    with pytest.raises(AttributeError):
        c.no_such_field = 1


def test_error_returns_and_last_error():
    assert smem.initialize() == 0
    smem.get_and_clear_last_err_msg()
    # An int-returning call returns the negative code and leaves the message.
    cfg = smem.bm.BmConfig()
    rc = smem.bm.initialize(f"tcp://127.0.0.1:{free_port()}", 2, 0, cfg)  # rank_id 65535
    assert rc == smem.SM_INVALID_PARAM
    msg = smem.get_last_err_msg()
    assert "rankId" in msg and "SM_INVALID_PARAM" in msg
    assert smem.get_and_clear_last_err_msg() == msg
    assert smem.get_last_err_msg() == ""
    assert smem.bm.initialize("udp://x", 1, 0, cfg) < 0
    # An object-returning call raises SmemError with the code.
    with pytest.raises(smem.SmemError) as e:
        smem.bm.create(0, 2 << 20)
    assert e.value.code == smem.SM_NOT_INITIALIZED and e.value.name == "SM_NOT_INITIALIZED"
    assert "initialize" in smem.get_last_err_msg()
    with pytest.raises(smem.SmemError) as e:
        smem.shm.create(0, 2, 0, 2 << 20)
    assert e.value.code < 0 and str(e.value)
    assert smem.create_config_store("tcp://nowhere") == smem.SM_INVALID_PARAM
    assert smem.set_log_level(7) == smem.SM_INVALID_PARAM
    assert smem.set_log_level(2) == 0


def test_wrong_argument_types_raise_type_error():
    with pytest.raises(TypeError):
        smem.bm.initialize(5, 1, 0, smem.bm.BmConfig())
    with pytest.raises(TypeError):
        smem.set_extern_logger(5)
    with pytest.raises(TypeError):
        smem.set_log_level("debug")
    with pytest.raises(TypeError):
        smem.shm.create("0", 1, 0, 2 << 20)


def test_create_config_store_serves_and_refuses_a_taken_port():
    port = free_port()
    assert smem.create_config_store(f"tcp://127.0.0.1:{port}") == 0
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass
    rc = smem.create_config_store(f"tcp://127.0.0.1:{port}")
    assert rc < 0 and smem.get_last_err_msg()


def _logger_child(q):
    def body():
        import smem

        records = []
        assert smem.set_extern_logger(lambda level, msg: records.append((level, msg))) == 0
        assert smem.set_log_level(0) == 0
        rc = smem.bm.initialize("tcp://127.0.0.1:1", 2, 0, smem.bm.BmConfig())
        assert rc == smem.SM_INVALID_PARAM
        assert any(level == 2 and "rankId" in msg for level, msg in records), records
        assert all(isinstance(level, int) and isinstance(msg, str) for level, msg in records)
        # The level filter applies to the logger too.
        assert smem.set_log_level(3) == 0
        n = len(records)
        smem.bm.initialize("tcp://127.0.0.1:1", 2, 0, smem.bm.BmConfig())
        assert len(records) == n, records[n:]
        # A logger that raises does not break the call (the exception goes to unraisablehook).
        seen = []
        sys.unraisablehook = lambda u: seen.append(u.exc_type)

        def bad(level, msg):
            raise ValueError("logger failure")

        assert smem.set_log_level(2) == 0
        assert smem.set_extern_logger(bad) == 0
        assert smem.bm.initialize("tcp://127.0.0.1:1", 2, 0, smem.bm.BmConfig()) == smem.SM_INVALID_PARAM
        assert ValueError in seen
        assert smem.set_extern_logger(None) == 0

    report(0, q, body)


def test_logger_callback_into_python():
    run_processes([(_logger_child, ())], deadline_s=60)


REF_PYTHON = os.environ.get("SMEM_REF_PYTHON") or os.path.join(
    os.path.dirname(__file__), "..", "..", "target", "venv-mf", "bin", "python"
)

# (object path, names) whose parameters must match the reference's, in order.
PARITY = {
    "": "initialize uninitialize set_log_level set_extern_logger get_last_err_msg get_and_clear_last_err_msg create_config_store",
    "bm": "initialize uninitialize create bm_rank_id",
    "bm.BigMemory": "join leave local_mem_size peer_rank_ptr get_rank_id_by_gva destroy register unregister copy_data copy_data_batch wait",
    "shm": "initialize uninitialize create",
    "shm.ShareMemory": "set_context destroy barrier all_gather topology_can_reach query_support_data_operation",
    "TransferEngine": "initialize get_rpc_port register_memory batch_register_memory unregister_memory "
    "transfer_sync_write transfer_sync_read batch_transfer_sync_write batch_transfer_sync_read "
    "transfer_async_write_submit transfer_async_read_submit batch_transfer_async_write_submit "
    "batch_transfer_async_read_submit destroy",
}

REF_SCRIPT = r"""
import json, re, memfabric_hybrid as mf
out = {}
for path, names in json.loads(PARITY).items():
    obj = mf
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    for n in names.split():
        doc = getattr(obj, n).__doc__ or ""
        m = re.search(n + r"\((.*?)\) ->", doc)
        params = [] if m is None else [p.split(":")[0].strip() for p in re.split(r",\s*(?![^\[]*\])", m.group(1)) if p.strip()]
        out[path + "." + n] = [p for p in params if p not in ("self", "")]
print(json.dumps(out))
"""


def test_argument_names_match_the_reference():
    parity = PARITY
    if not os.path.exists(REF_PYTHON):
        pytest.skip(f"the reference venv is not there ({REF_PYTHON}; scripts/test.sh creates it)")
    script = REF_SCRIPT.replace("json.loads(PARITY)", "json.loads(%r)" % json.dumps(parity))
    ref = json.loads(subprocess.run([REF_PYTHON, "-c", script], check=True, capture_output=True, text=True, timeout=120).stdout)
    for path, names in parity.items():
        obj = smem
        for part in filter(None, path.split(".")):
            obj = getattr(obj, part)
        for n in names.split():
            ours = [p for p in inspect.signature(getattr(obj, n)).parameters if p != "self"]
            theirs = ref[path + "." + n]
            # Ours may add trailing optional parameters; the reference's come first, in order.
            assert ours[: len(theirs)] == theirs, f"{path}.{n}: ours {ours}, reference {theirs}"


def test_a_program_written_for_the_reference_runs_unchanged():
    """tests/reference_program.py uses only memfabric_hybrid's surface (import line aside):
    BM with 2 ranks, SHM with 3 ranks, a TransferEngine pair, in its own processes."""
    prog = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_program.py")
    out = subprocess.run([sys.executable, prog], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-4000:]
    assert "bm: 2 ranks OK" in out.stdout and "shm: 3 ranks OK" in out.stdout
    assert "te: transfer engine pair OK" in out.stdout
