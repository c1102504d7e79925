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

    trans_over_tls();

    opt.enableTls = 0;
    // SAFETY: as above; the file fields are ignored when TLS is off.
    assert_eq!(unsafe { smem_set_ssl_option(&opt) }, SM_OK);
    assert!(ClientOptions::default().tls.is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Transfer engines created while TLS is on: the store and the transport run mutual TLS. The
/// writer has no `SMEMB_DATA_OP_SDMA`, so its writes into the same-host peer go through the
/// transport (TLS) rather than memory.
fn trans_over_tls() {
    let url = CString::new(format!("tcp://127.0.0.1:{}", common::ranks::free_port())).expect("url");
    let mut c = std::mem::MaybeUninit::<smem_trans_config_t>::uninit();
    // SAFETY: `c` is valid for writing a config.
    assert_eq!(unsafe { smem_trans_config_init(c.as_mut_ptr()) }, SM_OK);
    // SAFETY: initialised by the call above.
    let mut c = unsafe { c.assume_init() };
    c.initTimeout = 10;
    // SAFETY: `c` is a valid config.
    assert_eq!(unsafe { smem_trans_init(&c) }, SM_OK, "{}", last_err());
    let mut host = c;
    host.startConfigServer = 1;
    // SAFETY: valid strings and config.
    let a = unsafe { smem_trans_create(url.as_ptr(), c"tls-a".as_ptr(), &host) };
    assert!(!a.is_null(), "{}", last_err());
    let mut target = vec![0u8; 1 << 20];
    // SAFETY: `target` lives until after the engines are destroyed.
    let rc = unsafe { smem_trans_register_mem(a, target.as_mut_ptr().cast(), target.len(), 0) };
    assert_eq!(rc, SM_OK, "{}", last_err());
    let mut tcp_only = c;
    tcp_only.dataOpType = SMEMB_DATA_OP_HOST_TCP;
    // SAFETY: valid strings and config.
    let b = unsafe { smem_trans_create(url.as_ptr(), c"tls-b".as_ptr(), &tcp_only) };
    assert!(!b.is_null(), "{}", last_err());
    let src: Vec<u8> = (0..target.len()).map(|i| (i % 251) as u8).collect();
    // SAFETY: `src` is readable for its length; the remote range is registered by `a`.
    let rc = unsafe {
        smem_trans_write(
            b,
            src.as_ptr().cast(),
            c"tls-a".as_ptr(),
            target.as_mut_ptr().cast(),
            src.len(),
            0,
        )
    };
    assert_eq!(rc, SM_OK, "{}", last_err());
    let mut back = vec![0u8; 4096];
    // SAFETY: `back` is writable for its length.
    let rc = unsafe {
        smem_trans_read(
            b,
            back.as_mut_ptr().cast(),
            c"tls-a".as_ptr(),
            target.as_ptr().cast(),
            back.len(),
            0,
        )
    };
    assert_eq!(rc, SM_OK, "{}", last_err());
    assert_eq!(&back[..], &src[..4096]);
    // SAFETY: handles from create; `a` (hosting the store) goes last.
    unsafe {
        smem_trans_destroy(b, 0);
        smem_trans_destroy(a, 0);
        smem_trans_uninit(0);
    }
    assert_eq!(target, src, "every byte arrived over TLS");
}
