#!/usr/bin/env python3
"""Start the reference (memfabric-hybrid 1.3.0) config store server.

    <venv>/bin/python ref_server.py tcp://127.0.0.1:PORT [--max-seconds 600] [--log-level 3]

Prints READY on stdout once the server listens (create_config_store returned 0 and a TCP
connect to the port succeeds), then runs until stdin reaches EOF, SIGTERM/SIGINT arrives, or
--max-seconds elapse. Exit code 0 on a clean stop, 2 if the store could not be started.
The store runs on threads inside this process, so it dies with the process (we use os._exit
to skip the reference's teardown, which is not needed and may block).
"""
import argparse, os, select, signal, socket, sys, threading, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--log-level", type=int, default=int(os.environ.get("MF_LOG_LEVEL", "3")))
    ap.add_argument("--no-stdin", action="store_true", help="do not watch stdin for EOF")
    a = ap.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    # Hard lifetime even if the reference blocks inside a native call.
    def watchdog():
        time.sleep(a.max_seconds + 10)
        sys.stderr.write("ref_server: watchdog hard exit\n")
        os._exit(3)
    threading.Thread(target=watchdog, daemon=True).start()

    # The reference's native logger writes to fd 1; keep our stdout for READY only.
    ready_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    t0 = time.monotonic()
    import memfabric_hybrid as mf  # noqa: E402  (loads the native libs)
    mf.set_log_level(a.log_level)
    ret = mf.create_config_store(a.url)
    if ret != 0:
        sys.stderr.write(f"ref_server: create_config_store({a.url}) returned {ret}: "
                         f"{mf.get_last_err_msg()}\n")
        os._exit(2)
    hostport = a.url.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    host = host.strip("[]")
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.stderr.write("ref_server: port not reachable after create_config_store\n")
                os._exit(2)
            time.sleep(0.05)
    # Note: the probe connection above sends no handshake and closes at once; the reference
    # drops such a link (SPEC 5.1: <16 B handshake -> closed without reply).
    sys.stderr.write(f"ref_server: listening on {a.url} after {time.monotonic() - t0:.3f}s\n")
    ready_out.write("READY\n")
    ready_out.flush()

    end = t0 + a.max_seconds
    watch_stdin = not a.no_stdin
    while not stop.is_set() and time.monotonic() < end:
        if watch_stdin:
            try:
                r, _, _ = select.select([sys.stdin], [], [], 0.2)
            except (OSError, ValueError, InterruptedError):
                r = []
            if r:
                try:
                    data = os.read(sys.stdin.fileno(), 4096)
                except OSError:
                    data = b""
                if not data:
                    break
        else:
            stop.wait(0.2)
    sys.stderr.flush()
    ready_out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
