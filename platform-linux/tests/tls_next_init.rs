//! `smem_set_ssl_option` (`tls::set_global`) called after init takes effect at the next init
//! (README "C API decisions"): the runtime captures the setting at init, so the network
//! transport it starts later (at the first `HOST_TCP` object) speaks what the store link speaks;
//! after uninit and a new init, the new setting holds.
//!
//! One test in its own binary: the runtime, the TLS setting and the log sink are process-wide.

use std::sync::Mutex;
use std::time::Duration;

use smem_linux::logging;
use smem_linux::runtime::{self, BmConfig};
use smem_linux::tls::{self, TlsOptions};

#[path = "support/pki.rs"]
mod pki;

/// `SMEMB_DATA_OP_SDMA | SMEMB_DATA_OP_HOST_TCP`.
const SDMA_TCP: u32 = 1 | 4;

static SERVING: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[allow(clippy::disallowed_methods)] // The test's own record lock, not a lock of smem.
fn record(_level: i32, msg: &str) {
    if msg.contains("transport: serving windows at") {
        SERVING.lock().unwrap().push(msg.to_owned());
    }
}

#[allow(clippy::disallowed_methods)] // As above.
fn serving() -> Vec<String> {
    std::mem::take(&mut *SERVING.lock().unwrap())
}

/// Inits a world of one rank hosting its store, creates and joins a `HOST_TCP` object (which
/// starts the transport), then tears everything down.
fn one_rank_job(between_init_and_create: impl FnOnce()) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let cfg = BmConfig {
        rank_id: 0,
        init_timeout: Duration::from_secs(20),
        create_timeout: Duration::from_secs(20),
        control_timeout: Duration::from_secs(20),
        ..BmConfig::default()
    };
    runtime::bm_init(&format!("tcp://127.0.0.1:{port}"), 1, 0, &cfg).expect("init");
    between_init_and_create();
    let h = runtime::bm_create(0, 1, SDMA_TCP, 2 << 20, 0, 0).expect("create");
    runtime::bm_join(h, 0).expect("join");
    runtime::bm_destroy(h).expect("destroy");
    runtime::bm_uninit(0);
}

#[test]
fn tls_set_after_init_waits_for_the_next_init() {
    let pki = pki::Pki::new("next-init");
    let on = || {
        TlsOptions::new(
            pki.ca_file.clone(),
            pki.server_cert.clone(),
            pki.server_key.clone(),
        )
    };
    logging::set_level(logging::INFO).expect("level");
    logging::set_sink(Some(record)).expect("sink");

    // Plain init; TLS switched on before the transport starts: it stays plain.
    one_rank_job(|| tls::set_global(Some(on())).expect("enable TLS"));
    let got = serving();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(!got[0].contains("TLS"), "{got:?}");

    // The next init runs with TLS (store and transport); switching it off meanwhile does not
    // change that either.
    one_rank_job(|| tls::set_global(None).expect("disable TLS"));
    let got = serving();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("(mutual TLS)"), "{got:?}");

    // And the one after is plain again.
    one_rank_job(|| {});
    let got = serving();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(!got[0].contains("TLS"), "{got:?}");
    logging::set_sink(None).expect("sink");
}
