//! Mutual TLS against the reference wheel (memfabric-hybrid 1.3.0), both ways, through
//! `tests/interop/ref_tls.py`: our TLS client runs ops against the reference TLS store, and
//! the reference TLS client passes the TLS and store handshakes against `smem-store --tls-*`.
//! Same skip policy as `interop.rs`; the PKI is written by the `openssl` command line.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use smem_core::ErrorCode;
use smem_linux::store::{ClientOptions, StoreClient};
use smem_linux::tls::TlsOptions;
use smem_tests::servers::{SmemStoreProcess, ref_python};
use smem_tests::{ChildGuard, free_port, wait_for_line, workspace_root};

fn skip_or_require_wheel(test: &str) -> Option<PathBuf> {
    if std::env::var_os("SMEM_SKIP_INTEROP").is_some_and(|v| v == "1") {
        println!("SKIPPED {test}: SMEM_SKIP_INTEROP=1");
        return None;
    }
    let python = ref_python();
    assert!(
        python.is_some(),
        "{test}: no Python with memfabric-hybrid 1.3.0; run `bash tests/interop/setup-venv.sh` \
         (or set SMEM_REF_PYTHON, or SMEM_SKIP_INTEROP=1 to skip on purpose)"
    );
    if Command::new("openssl").arg("version").output().is_err() {
        println!("SKIPPED {test}: no openssl command line to write the PKI");
        return None;
    }
    python
}

#[test]
fn tls_both_ways_with_the_reference() {
    let Some(python) = skip_or_require_wheel("tls_both_ways_with_the_reference") else {
        return;
    };
    let script = workspace_root().join("tests/interop/ref_tls.py");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("interop-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(&python)
        .arg(&script)
        .arg("pki")
        .arg(&dir)
        .output()
        .expect("run ref_tls.py pki");
    assert!(out.status.success(), "ref_tls.py pki: {out:?}");
    let file = |f: &str| dir.join(f).display().to_string();

    // Ours -> reference: the reference TLS store, our TLS client.
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut server = ChildGuard::new(
        Command::new(&python)
            .arg(&script)
            .args(["server"])
            .arg(&dir)
            .arg(&url)
            .args(["--seconds", "120"])
            .env("MF_LOG_LEVEL", "3")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the reference TLS store"),
        "reference TLS store",
    );
    let stdout = server.take_stdout().expect("stdout");
    wait_for_line(stdout, Duration::from_secs(30), |l| {
        (l.trim() == "READY").then_some(())
    })
    .expect("reference TLS store READY");
    let tls = TlsOptions::new(file("ca.pem"), file("client.pem"), file("client.key"))
        .load()
        .expect("client TLS");
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(10),
        op_timeout: Duration::from_secs(10),
        tls: Some(Arc::new(tls)),
        ..ClientOptions::default()
    };
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut c =
        StoreClient::connect(addr, opts.clone()).expect("our TLS client -> reference TLS store");
    // Seen on a loaded machine (about 1 run in 10 with a busy loop beside it, and twice in a
    // row under the load of several parallel builds): the reference server answers our TLS
    // handshake, then never answers the first request on the link and closes it ~6 s later
    // without close_notify (no reply, no -400, so not a rejected frame). Its own logs say
    // nothing (tests/interop/NOTES.md). Say so and try again on a new link, up to 3 links,
    // pausing a moment between them; any other error, or 3 dropped links, fails the test.
    let mut attempt = 1;
    while let Err(e) = c.set(b"interop/tls", b"v") {
        assert_eq!(e.code(), ErrorCode::IoError, "set: {e}");
        assert!(
            attempt < 3,
            "set: the reference dropped the first request of {attempt} links: {e}"
        );
        println!(
            "NOTE: the reference TLS store dropped our first request on link {attempt} ({e}); retrying on a new link"
        );
        c.close();
        std::thread::sleep(Duration::from_millis(200 * attempt));
        attempt += 1;
        c = StoreClient::connect(addr, opts.clone())
            .expect("our TLS client -> reference TLS store (new link)");
    }
    assert_eq!(
        c.get(b"interop/tls").expect("get").as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(c.add(b"interop/n", 5).expect("add"), 5);
    let big = vec![9_u8; 1 << 20];
    c.set(b"interop/big", &big).expect("set 1 MiB");
    assert_eq!(c.get(b"interop/big").expect("get 1 MiB"), Some(big));
    c.close();
    server.kill();

    // Reference -> ours: our TLS store, the reference TLS client.
    let store = SmemStoreProcess::start_with(&[
        "--heartbeat-timeout",
        "0",
        "--tls-ca",
        &file("ca.pem"),
        "--tls-cert",
        &file("server.pem"),
        "--tls-key",
        &file("server.key"),
        "--tls-crl",
        &file("ca.crl"),
    ])
    .expect("smem-store with TLS");
    let mut client = ChildGuard::new(
        Command::new(&python)
            .arg(&script)
            .args(["client"])
            .arg(&dir)
            .arg(format!("tcp://{}", store.addr()))
            .env("MF_LOG_LEVEL", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the reference TLS client"),
        "reference TLS client",
    );
    let stdout = client.take_stdout().expect("stdout");
    let connected = wait_for_line(stdout, Duration::from_secs(60), |l| {
        l.contains("connect store success").then_some(())
    });
    assert!(
        connected.is_some(),
        "the reference client did not log 'connect store success' against our TLS store"
    );
    client.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
