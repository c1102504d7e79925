#!/usr/bin/env python3
"""Drive the reference (memfabric-hybrid 1.3.0) config store over TLS, for interop checks.

    <venv>/bin/python ref_tls.py pki DIR          (venv: tests/interop/setup-venv.sh)
        Writes an RSA-3072 CA, server and client certificates and an empty CRL to DIR with the
        openssl command line (the reference refuses keys under 3072 bits), and a copy of the
        system OpenSSL 3 libraries under DIR/ssl (the reference dlopens libssl.so/libcrypto.so
        from a directory, refusing symlinks and group/other-writable files).
    <venv>/bin/python ref_tls.py server DIR tcp://127.0.0.1:PORT [--seconds N]
        Runs the reference TLS store (prints READY), e.g. for
        `SMEM_REF_TLS_URL=... SMEM_REF_TLS_PKI=DIR cargo test -p smem-linux
         --test store_tls_reference -- --ignored`.
    <venv>/bin/python ref_tls.py client DIR tcp://127.0.0.1:PORT
        A reference TLS *client*: smem_shm_init with startConfigStore off connects to the store
        at the URL (e.g. `smem-store --tls-ca DIR/ca.pem --tls-cert DIR/server.pem --tls-key
        DIR/server.key`); it logs "connect store success" once the TLS and store handshakes
        passed (the rest of shm init then fails without an Ascend driver, as expected here).

Run both ways by `cargo test -p smem-tests --test interop_tls`.
The wheel's public `smem_set_conf_store_tls` is a stub that returns 0 without effect, so this
calls the exported `smem_config_store_set_tls(const smem_tls_options_t *, const char
*openssl_dir, const char *)` (read from libmf_smem.so) through ctypes.
"""
import ctypes, os, shutil, subprocess, sys, time


def pki(d):
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o700)
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:3072", "-nodes", "-keyout", "ca.key",
        "-subj", "/CN=interop CA", "-days", "2", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
                "keyUsage=digitalSignature\n")
    for i, n in enumerate(["server", "client"]):
        run("openssl", "req", "-new", "-newkey", "rsa:3072", "-nodes", "-keyout", f"{n}.key",
            "-subj", f"/CN={n}", "-out", f"{n}.csr")
        run("openssl", "x509", "-req", "-in", f"{n}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", str(100 + i), "-days", "2", "-out", f"{n}.pem", "-extfile", "ext.cnf")
    with open(os.path.join(d, "ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\ncrlnumber=crlnumber\n"
                "default_md=sha256\ndefault_crl_days=30\n")
    open(os.path.join(d, "index.txt"), "w").close()
    with open(os.path.join(d, "crlnumber"), "w") as f:
        f.write("01\n")
    run("openssl", "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "ca.key", "-cert", "ca.pem",
        "-out", "ca.crl")
    for k in ["ca.key", "server.key", "client.key"]:
        os.chmod(os.path.join(d, k), 0o600)
    ssl = os.path.join(d, "ssl")
    os.makedirs(ssl, exist_ok=True)
    for lib in ["libssl.so", "libcrypto.so"]:
        dst = os.path.join(ssl, lib)
        if os.path.exists(dst):
            os.chmod(dst, 0o700)
        shutil.copyfile(os.path.realpath(f"/usr/lib/x86_64-linux-gnu/{lib}.3"), dst)
        os.chmod(dst, 0o500)
    os.chmod(ssl, 0o700)
    print(f"PKI and OpenSSL copy in {d}")


def set_tls(mf, d, role):
    lib = ctypes.CDLL(os.path.join(os.path.dirname(mf.__file__), "lib", "libmf_smem.so"))

    class Opt(ctypes.Structure):  # smem_tls_options_t (include/smem/host/smem_tls_options.h)
        _fields_ = [("enable_tls", ctypes.c_uint8)] + [(n, ctypes.c_char_p) for n in [
            "tls_top_path", "tls_cert", "tls_crl_path", "tls_ca_path", "tls_ca_file",
            "tls_crl_file", "tls_private_key", "tls_private_key_password"]]

    p = os.path.abspath(d).encode() + b"/"
    opt = Opt(1, p, p + role + b".pem", p, p, p + b"ca.pem", p + b"ca.crl", p + role + b".key",
              None)
    fn = lib.smem_config_store_set_tls
    fn.argtypes = [ctypes.POINTER(Opt), ctypes.c_char_p, ctypes.c_char_p]
    ret = fn(ctypes.byref(opt), p + b"ssl", None)
    if ret != 0:
        sys.exit(f"smem_config_store_set_tls returned {ret}")


def main():
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "pki":
        return pki(d)
    import memfabric_hybrid as mf
    mf.set_log_level(int(os.environ.get("MF_LOG_LEVEL", "1")))
    url = sys.argv[3]
    if cmd == "server":
        set_tls(mf, d, b"server")
        ret = mf.create_config_store(url)
        if ret != 0:
            sys.exit(f"create_config_store returned {ret}: {mf.get_last_err_msg()}")
        print("READY", flush=True)
        secs = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
        time.sleep(secs)
        os._exit(0)
    if cmd == "client":
        set_tls(mf, d, b"client")
        mf.initialize(0)
        cfg = mf.shm.ShmConfig()
        cfg.start_store = False
        ret = mf.shm.initialize(url, 1, 0, 0, cfg)
        print(f"shm.initialize returned {ret}: {mf.get_last_err_msg()}", flush=True)
        os._exit(0)
    sys.exit(__doc__)


if __name__ == "__main__":
    main()
