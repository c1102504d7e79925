//! Accepting links: a connection storm (every rank of a 1024-rank job connecting at once) is
//! taken without resets.
//!
//! - The listen backlog is [`crate::sys::net::LISTEN_BACKLOG`] (4096; the kernel caps it at
//!   `net.core.somaxconn`, 4096 on current kernels), so 1024 connections arriving before the
//!   loop runs wait in the accept queue instead of being dropped (a full queue drops the
//!   client's final ACK and delays it by a SYN-ACK retransmission, 1 s and more).
//! - Every wake-up of the listener accepts until the queue is empty (`WouldBlock`), and each
//!   link is registered with its handshake deadline counted from its accept.
//! - Out of descriptors (`EMFILE`, `ENFILE`) or kernel memory, the listener is taken out of the
//!   epoll set for [`ACCEPT_PAUSE`] (a level-triggered listener would otherwise wake the loop
//!   at once, forever) while the pending connections wait in the queue; the server raises its
//!   soft `RLIMIT_NOFILE` at start ([`raise_descriptor_limit`]) so that a full `max_links`
//!   fits.
//! - Deadlines are about the peer, not about this thread: a handshake deadline or a heartbeat
//!   expiry first reads what the link has pending ([`EventLoop::catch_up`]), so a store thread
//!   starved by a loaded machine does not close links whose bytes are already waiting.

use std::cmp::Reverse;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::{
    Detached, EPOLL_HUP_ERR, EPOLL_IN, EventLoop, Limits, Link, LinkId, OVER_LIMIT_GRACE,
    TOKEN_LISTENER, Timer,
};

/// How long the listener rests after an accept failed for want of descriptors or memory.
pub(super) const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Descriptors a store process needs besides its links (listener, epoll, eventfd, the
/// embedding process's own files).
const DESCRIPTOR_MARGIN: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` so that `max_links` (plus the refused-link grace and a
/// margin) fit; the default soft limit of 1024 does not hold a 1024-rank job's links. Logs what
/// it did; never fails the start (accept then pauses on `EMFILE`, see the module docs).
pub(super) fn raise_descriptor_limit(limits: &Limits) {
    let want = (limits.max_links.saturating_add(OVER_LIMIT_GRACE) as u64)
        .saturating_add(DESCRIPTOR_MARGIN);
    match crate::sys::fd::raise_nofile_limit(want) {
        Ok((soft, _)) if soft >= want => debug!("config store: descriptor limit {soft}"),
        Ok((soft, hard)) => warn!(
            "config store: descriptor limit {soft} (hard {hard}) is below the {want} that max_links {} needs; raise `ulimit -n`",
            limits.max_links
        ),
        Err(e) => warn!("config store: cannot raise the descriptor limit: {e}"),
    }
}

impl EventLoop {
    pub(super) fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let open = self.links.len();
                    let max = self.config.limits.max_links;
                    let over = open >= max;
                    if over && open >= max.saturating_add(OVER_LIMIT_GRACE) {
                        warn!("config store: dropping {peer}: {open} links open (max_links)");
                        continue;
                    }
                    if let Err(e) = self.add_link(stream, peer, over) {
                        warn!("config store: cannot register link from {peer}: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // E.g. EMFILE: the connection stays queued; rest, then accept again.
                    warn!(
                        "config store accept failed ({} links open): {e}; accepting again in {} ms",
                        self.links.len(),
                        ACCEPT_PAUSE.as_millis()
                    );
                    self.pause_accept();
                    return;
                }
            }
        }
    }

    fn pause_accept(&mut self) {
        if self.accept_paused {
            return;
        }
        let fd = self.listener.as_raw_fd();
        if let Err(e) = self.epoll.modify(fd, TOKEN_LISTENER, 0) {
            warn!("config store: cannot pause the listener: {e}");
            return;
        }
        self.accept_paused = true;
        if let Some(at) = Instant::now().checked_add(ACCEPT_PAUSE) {
            self.timers.push(Reverse((at, Timer::ResumeAccept)));
        }
    }

    /// The [`Timer::ResumeAccept`] timer: listen again and take what queued meanwhile.
    pub(super) fn resume_accept(&mut self) {
        if !self.accept_paused {
            return;
        }
        let fd = self.listener.as_raw_fd();
        match self.epoll.modify(fd, TOKEN_LISTENER, EPOLL_IN) {
            Ok(()) => {
                self.accept_paused = false;
                info!("config store: accepting again");
                self.accept();
            }
            Err(e) => {
                warn!("config store: cannot resume the listener: {e}");
                if let Some(at) = Instant::now().checked_add(ACCEPT_PAUSE) {
                    self.timers.push(Reverse((at, Timer::ResumeAccept)));
                }
            }
        }
    }

    fn add_link(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        over_limit: bool,
    ) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        let id = self.next_link;
        self.next_link += 1;
        self.epoll
            .add(stream.as_raw_fd(), id, EPOLL_IN | EPOLL_HUP_ERR)?;
        debug!("config store: link {id} from {peer}");
        self.links.insert(
            id,
            Link {
                stream: Detached::new(stream),
                peer,
                handshaken: false,
                over_limit,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                wpos: 0,
                want_write: false,
                close_after_flush: None,
                last_heartbeat: None,
                reserved: 0,
                paused: false,
                tls: None,
                queued: false,
            },
        );
        let at = Instant::now().checked_add(self.config.handshake_timeout);
        if let Some(at) = at {
            self.timers.push(Reverse((at, Timer::Handshake(id))));
        }
        Ok(())
    }

    /// Read and handle what link `id` has pending, as if its readiness had been reported: a
    /// deadline about to close it judges the peer, not how long this thread waited for a
    /// CPU (under load the kernel may hold its bytes while other links' events were served).
    pub(super) fn catch_up(&mut self, id: LinkId) {
        let idle = self
            .links
            .get(&id)
            .is_some_and(|l| !l.paused && l.close_after_flush.is_none());
        if idle {
            self.link_event(id, EPOLL_IN);
        }
    }
}
