//! `smem_set_ssl_option` end to end: certificates written by the `openssl` command line (the
//! test is skipped where it is not installed), an encrypted PKCS#8 key, then a config store and
//! a client created with default settings speak mutual TLS. Own test binary: the TLS setting
//! is process-wide.

mod common;

use std::ffi::{CStr, CString};
use std::path::Path;
use std::process::Command;
use std::ptr;
use std::time::Duration;

use smem::*;
use smem_linux::store::{ClientOptions, ServerConfig, StoreClient, StoreServer};

const SM_OK: i32 = 0;
const SM_TLS_ERROR: i32 = -2101;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

fn last_err() -> String {
    // SAFETY: returns a valid NUL-terminated string (never NULL).
    let p = unsafe { smem_get_and_clear_last_err_msg() };
    // SAFETY: as above, valid until the next smem call on this thread.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[test]
fn set_ssl_option_enables_mutual_tls() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not installed: skipped");
        return;
    }
    let dir = common::scratch("tls");
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-subj",
            "/CN=capi test CA",
            "-days",
            "2",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("ext");
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "rank.key",
            "-subj",
            "/CN=rank",
            "-out",
            "rank.csr",
        ],
    );
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "rank.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "7",
            "-days",
            "2",
            "-out",
            "rank.pem",
            "-extfile",
            "ext.cnf",
        ],
    );
    openssl(
        &dir,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "rank.key",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:pw",
            "-out",
            "rank.enc.key",
        ],
    );
    let path = |f: &str| CString::new(dir.join(f).to_str().expect("utf-8")).expect("no NUL");
    let (ca, cert, key) = (path("ca.pem"), path("rank.pem"), path("rank.enc.key"));
    let mut opt = smem_tls_option {
        enableTls: 1,
        caFile: ca.as_ptr(),
        crlFile: ptr::null(),
        certFile: cert.as_ptr(),
        keyFile: key.as_ptr(),
        keyPassword: c"wrong".as_ptr(),
    };

    // SAFETY: `opt` and its strings are valid for the call.
    assert_eq!(unsafe { smem_set_ssl_option(&opt) }, SM_TLS_ERROR);
    let msg = last_err();
    assert!(
        msg.contains("rank.enc.key") && msg.contains("wrong password"),
        "{msg}"
    );
    assert!(
        ServerConfig::default().tls.is_none(),
        "a failed call changes nothing"
    );

    opt.keyPassword = c"pw".as_ptr();
    // SAFETY: as above.
    let ret = unsafe { smem_set_ssl_option(&opt) };
    assert_eq!(ret, SM_OK, "{}", last_err());
    drop((ca, cert, key)); // settings are copied

    // Stores and clients created from now on speak mutual TLS.
    let server = StoreServer::start(ServerConfig {
        heartbeat_timeout: None,
        handshake_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    })
    .expect("TLS store");
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        op_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let c = StoreClient::connect(server.local_addr(), opts.clone()).expect("TLS client");
    c.set(b"k", b"v").expect("set");
    assert_eq!(c.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    let plain = ClientOptions { tls: None, ..opts };
    StoreClient::connect(server.local_addr(), plain).expect_err("a plaintext client is refused");

    opt.enableTls = 0;
    // SAFETY: as above; the file fields are ignored when TLS is off.
    assert_eq!(unsafe { smem_set_ssl_option(&opt) }, SM_OK);
    assert!(ClientOptions::default().tls.is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
