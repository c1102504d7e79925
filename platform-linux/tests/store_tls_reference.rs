//! Interop with the reference (memfabric-hybrid 1.3.0) TLS config store, when one is running:
//! `SMEM_REF_TLS_URL=tcp://127.0.0.1:PORT SMEM_REF_TLS_PKI=DIR` (DIR holds ca.pem,
//! client.pem, client.key; see tests/interop/ref_tls_server.py). Ignored otherwise.

use std::sync::Arc;
use std::time::Duration;

use smem_core::url::StoreUrl;
use smem_linux::store::{ClientOptions, StoreClient};
use smem_linux::tls::TlsOptions;

#[test]
#[ignore = "needs a running reference TLS store (SMEM_REF_TLS_URL, SMEM_REF_TLS_PKI)"]
fn ops_against_the_reference_tls_store() {
    let (Ok(url), Ok(pki)) = (
        std::env::var("SMEM_REF_TLS_URL"),
        std::env::var("SMEM_REF_TLS_PKI"),
    ) else {
        eprintln!("SMEM_REF_TLS_URL / SMEM_REF_TLS_PKI not set: skipped");
        return;
    };
    let dir = std::path::Path::new(&pki);
    let tls = TlsOptions::new(
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client.key"),
    )
    .load()
    .expect("load client TLS");
    let addr = StoreUrl::parse(&url).expect("url").addr;
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        op_timeout: Duration::from_secs(5),
        tls: Some(Arc::new(tls)),
        ..ClientOptions::default()
    };
    let c = StoreClient::connect(addr, opts).expect("TLS connect to the reference store");
    c.set(b"interop/k", b"v").expect("set");
    assert_eq!(
        c.get(b"interop/k").expect("get").as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(c.add(b"interop/n", 3).expect("add"), 3);
    let big = vec![7_u8; 1 << 20];
    c.set(b"interop/big", &big).expect("set big");
    assert_eq!(c.get(b"interop/big").expect("get big"), Some(big));
}
