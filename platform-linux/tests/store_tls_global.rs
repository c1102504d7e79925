//! The process-wide TLS setting (`smem_set_ssl_option` -> `tls::set_global`) is what default
//! store servers and clients use. Its own test binary: the setting is process-wide.

use std::time::Duration;

use smem_core::ErrorCode;
use smem_linux::store::{ClientOptions, ServerConfig, StoreClient, StoreServer};
use smem_linux::tls::{self, TlsOptions};

#[path = "support/pki.rs"]
mod pki;

#[test]
fn defaults_follow_the_global_setting() {
    let pki = pki::Pki::new("global");
    assert!(ServerConfig::default().tls.is_none());

    // A failing setting is an error and changes nothing.
    let bad = TlsOptions::new(pki.dir.path().join("missing.pem"), "c", "k");
    let err = tls::set_global(Some(bad)).expect_err("missing CA");
    assert_eq!(err.code(), ErrorCode::TlsError);
    assert!(tls::global().is_none());

    // Server and client of this process share one certificate here (both EKUs).
    tls::set_global(Some(TlsOptions::new(
        &pki.ca_file,
        &pki.server_cert,
        &pki.server_key,
    )))
    .expect("set_global");
    let server = StoreServer::start(ServerConfig {
        heartbeat_timeout: None,
        handshake_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    })
    .expect("start");
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        op_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    assert!(opts.tls.is_some());
    let c = StoreClient::connect(server.local_addr(), opts.clone()).expect("TLS by default");
    c.set(b"k", b"v").expect("set");
    let plain = ClientOptions { tls: None, ..opts };
    StoreClient::connect(server.local_addr(), plain).expect_err("plain client refused");

    tls::set_global(None).expect("clear");
    assert!(ServerConfig::default().tls.is_none() && ClientOptions::default().tls.is_none());
}
