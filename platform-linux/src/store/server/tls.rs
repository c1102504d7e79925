//! TLS on a store link: the session after the clear header, the store handshake once the
//! peer's certificate is verified, and the clear refusal of a plaintext client.

use std::io::Read as _;

use log::{info, warn};
use smem_core::wire::handshake::Handshake;
use smem_core::wire::status;

use super::{EventLoop, LinkId, TLS_HANDSHAKE_RECORD};
use crate::Error;
use crate::tls::ServerTlsSession;

/// A link's TLS session and the store handshake waiting for the TLS handshake to finish.
pub(super) struct LinkTls {
    pub(super) session: ServerTlsSession,
    /// The clear-text header, processed once the peer's certificate is verified.
    pub(super) pending: Option<Handshake>,
    /// TLS bytes read from the socket together with the header, not yet fed.
    pub(super) prefix: Vec<u8>,
    /// Whether the first TLS byte arrived (and was a handshake record: else the link is
    /// refused as a plaintext client).
    pub(super) seen_input: bool,
    /// `close_notify` queued after the last reply of a refused or closing link.
    pub(super) closing: bool,
}

pub(super) fn not_client_hello(first: u8) -> String {
    format!(
        "peer sent {first:#04x} after its hello, not a TLS ClientHello (0x16): a plaintext \
         client talking to a TLS store?"
    )
}

impl EventLoop {
    /// Feeds the TLS bytes that came with the clear header to the new session.
    pub(super) fn start_tls(&mut self, id: LinkId) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(tls) = link.tls.as_mut() else {
            return;
        };
        let prefix = std::mem::take(&mut tls.prefix);
        let Some(&first) = prefix.first() else {
            return;
        };
        if first != TLS_HANDSHAKE_RECORD {
            return self.refuse_plaintext(id, &not_client_hello(first));
        }
        tls.seen_input = true;
        match tls.session.feed(&prefix, &mut link.rbuf) {
            Ok(_) => self.after_tls_input(id, false),
            Err(e) => self.refuse_tls(id, &e),
        }
    }

    /// After TLS input: once the TLS handshake is done (the client certificate verified), run
    /// the store handshake, then the frames that arrived. TLS output (handshake messages) is
    /// flushed at the end of the turn.
    pub(super) fn after_tls_input(&mut self, id: LinkId, full: bool) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(tls) = link.tls.as_mut() else {
            return;
        };
        if tls.session.handshake_done() {
            if let Some(hs) = tls.pending.take() {
                info!(
                    "config store: link {id} from {}: TLS peer {}",
                    link.peer,
                    tls.session.peer_identity().unwrap_or("?")
                );
                self.handshake(id, hs);
            }
        }
        if self
            .links
            .get(&id)
            .is_some_and(|l| l.handshaken && (full || !l.rbuf.is_empty()))
        {
            self.process_input(id);
        }
        self.dirty.push(id);
    }

    /// The peer failed TLS (no or bad certificate, not TLS at all...): log the reason, send
    /// the alert rustls queued (best effort), close.
    pub(super) fn refuse_tls(&mut self, id: LinkId, err: &Error) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        warn!(
            "config store: refusing TLS link {id} from {}: {}",
            link.peer,
            err.message()
        );
        if let Some(tls) = link.tls.as_mut() {
            let _ = tls.session.flush_to(&link.stream);
        }
        self.doomed.push((id, format!("TLS: {}", err.message())));
    }

    /// The peer of a TLS link sent its clear header but no TLS (a plaintext client): answer
    /// [`status::TLS_REQUIRED`] in clear, as a plaintext client expects, log why, close.
    pub(super) fn refuse_plaintext(&mut self, id: LinkId, why: &str) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        warn!("config store: refusing link {id} from {}: {why}", link.peer);
        // No TLS on this link any more: the answer and nothing else goes out in clear.
        link.tls = None;
        link.rbuf.clear();
        // Discard what the peer already sent (bounded), so that closing with unread input
        // does not reset the link before the answer is read.
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if !matches!(link.stream.read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
        link.wbuf
            .extend_from_slice(&status::TLS_REQUIRED.to_le_bytes());
        self.close_later(id, format!("TLS: {why}"));
    }
}
