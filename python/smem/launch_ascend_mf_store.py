"""Host a config store until SIGINT/SIGTERM: ``MF_CONFIG_STORE_URL=tcp://ip:port python -m
smem.launch_ascend_mf_store`` (the reference's launcher; ``MF_LOG_LEVEL`` sets the log level).
The ``smem-store`` binary of the workspace does the same with more options."""

import os
import signal
import sys

from smem import create_config_store, set_log_level


def launch_ascend_mf_store():
    log_level = os.getenv("MF_LOG_LEVEL")
    if log_level and log_level.isdigit():
        set_log_level(int(log_level))
    url = os.getenv("MF_CONFIG_STORE_URL")
    if not url:
        raise ValueError("env MF_CONFIG_STORE_URL not exist")
    ret = create_config_store(url)
    if ret != 0:
        sys.exit(ret)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    launch_ascend_mf_store()
    while True:
        signal.pause()
