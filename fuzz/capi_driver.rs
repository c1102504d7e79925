//! The `capi_calls` driver: interprets bytes as a sequence of C API calls with arbitrary
//! arguments against a live single-rank BM runtime (worldSize 1, in-process store on a loopback
//! port, initialised once per process), and checks that nothing crashes, leaks or corrupts.
//!
//! Shared by `fuzz/fuzz_targets/capi_calls.rs` (libFuzzer) and `capi/tests/fuzz_regressions.rs`
//! (replays the seed corpus and every past crash on stable), so it only uses `std`, `libc` and
//! the `smem` crate.
//!
//! Pointers: only what the API may dereference per its contract is passed where it will
//! dereference it: local buffers of known size (inside an arena with guard bytes and an
//! untouched reference buffer), out-parameters we own, or NULL. The global side of a copy may
//! be anything (the API validates it). "Dangling" local pointers are passed only where range
//! checks must reject them: `p + size` overflows, or `p` lies in an object's GVA span (which the
//! runtime resolves itself).
//!
//! Oracle: a model of the arena and of every joined window. After each call the arena must
//! equal its model (so a rejected copy touched no byte); a successful copy must have moved
//! exactly the modelled bytes; at the end of each input every joined window must equal its
//! model, and after cleanup no segment stays mapped and the descriptor count does not grow.

#![allow(unsafe_code, clippy::undocumented_unsafe_blocks, dead_code)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use smem::{
    smem_bm_config_init, smem_bm_config_t, smem_bm_copy, smem_bm_copy_2d, smem_bm_create,
    smem_bm_destroy, smem_bm_get_local_mem_size, smem_bm_get_rank_id, smem_bm_init, smem_bm_join,
    smem_bm_leave, smem_bm_ptr, smem_bm_t, smem_bm_uninit, smem_get_and_clear_last_err_msg,
    smem_get_last_err_msg, smem_init, smem_set_extern_logger, smem_set_log_level,
    smem_set_ssl_option, smem_shm_config_init, smem_shm_config_t, smem_shm_control_allgather,
    smem_shm_control_barrier, smem_shm_create, smem_shm_destroy, smem_shm_get_extra_context,
    smem_shm_get_global_rank, smem_shm_query_support_data_operation, smem_shm_set_extra_context,
    smem_shm_t, smem_shm_topology_can_reach, smem_tls_option,
};

const GUARD: usize = 64;
/// Sizes of the local buffers handed to the API.
const BUFS: [usize; 3] = [64, 4096, 3 << 20];
const REF_LEN: usize = 4096;
const MAX_OPS: usize = 64;
/// Objects the fuzzer creates use ids below this (others are expected to be refused or are
/// out of range anyway).
const IDS: u32 = 4;
const TWO_MIB: u64 = 2 << 20;

struct Arena {
    mem: Vec<u8>,
    model: Vec<u8>,
    /// Start of each buffer inside `mem`.
    starts: [usize; 3],
    ref_start: usize,
}

impl Arena {
    fn new() -> Self {
        let mut starts = [0; 3];
        let mut at = GUARD;
        for (i, len) in BUFS.iter().enumerate() {
            starts[i] = at;
            at += len + GUARD;
        }
        let ref_start = at;
        let total = ref_start + REF_LEN + GUARD;
        let mem = (0..total)
            .map(|i| (i as u8).wrapping_mul(167) ^ 0xa5)
            .collect::<Vec<_>>();
        Self {
            model: mem.clone(),
            mem,
            starts,
            ref_start,
        }
    }

    fn reset(&mut self) {
        self.model.copy_from_slice(&self.mem);
        // The reference buffer and guards are never written by anyone.
        let fresh = Self::new();
        assert_eq!(
            self.mem[..GUARD],
            fresh.mem[..GUARD],
            "leading guard changed"
        );
    }

    fn base(&self) -> u64 {
        self.mem.as_ptr() as u64
    }

    fn contains(&self, addr: u64, len: u64) -> Option<usize> {
        let off = addr.checked_sub(self.base())?;
        let end = off.checked_add(len)?;
        (end <= self.mem.len() as u64).then_some(off as usize)
    }

    fn check(&self, what: &str) {
        if self.mem != self.model {
            let i = self
                .mem
                .iter()
                .zip(&self.model)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!("{what}: local memory corrupted at arena offset {i}");
        }
    }
}

/// A BM object the input created.
struct Obj {
    h: smem_bm_t,
    /// Window base and model once joined.
    joined: Option<(u64, Vec<u8>)>,
}

struct State {
    arena: Arena,
    objs: Vec<(u32, Obj)>,
    /// Handles destroyed earlier: stale values the API must refuse.
    stale: Vec<smem_bm_t>,
    url: Vec<u8>,
    cfg: smem_bm_config_t,
    base_fds: usize,
    base_maps: usize,
}

// SAFETY (test driver): the raw handles are plain integers the API decodes; the state is only
// used under the mutex.
unsafe impl Send for State {}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static LOGGED: AtomicU64 = AtomicU64::new(0);
/// Successful creates, joins, copies (1D and 2D), and refused copies: to see what inputs reach.
static COUNTS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn bump(i: usize) {
    COUNTS[i].fetch_add(1, Ordering::Relaxed);
}

/// `created joined copied refused` so far in this process.
pub(crate) fn counts() -> [u64; 4] {
    [0, 1, 2, 3].map(|i| COUNTS[i].load(Ordering::Relaxed))
}

unsafe extern "C" fn count_logger(level: c_int, msg: *const c_char) {
    let _ = level;
    if !msg.is_null() {
        // SAFETY: the API passes a NUL-terminated message valid during the call.
        let _ = unsafe { CStr::from_ptr(msg) }.to_bytes().len();
    }
    LOGGED.fetch_add(1, Ordering::Relaxed);
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// Mappings of shared-memory segments (`/memfd:...`): what BM objects map. (All mappings
/// together are no leak measure under AddressSanitizer, whose allocator maps as it grows.)
fn count_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|s| s.lines().filter(|l| l.contains("/memfd:")).count())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn init_runtime(url: &[u8], cfg: &smem_bm_config_t) -> i32 {
    unsafe { smem_bm_init(url.as_ptr().cast(), 1, 0, cfg) }
}

unsafe extern "C" {
    fn atexit(cb: extern "C" fn()) -> c_int;
}

/// Tears the runtime down when the process exits (libFuzzer's time limit, the end of a test
/// binary): its store thread and buffers are freed before LeakSanitizer's exit-time check,
/// which otherwise counts the memory of the still-running store thread as leaked.
///
/// Leak reports naming a live store (the one the last `smem_bm_uninit` + `smem_bm_init` of op
/// 18 started; `fuzz/regressions/capi_calls/leak-*`): checked, not a leak of the runtime.
/// `smem_bm_uninit` stops and joins the store thread (`StoreServer::shutdown`), and the event
/// loop with every link, value and buffer is dropped when that thread returns
/// (`capi/tests/reinit_teardown.rs`: after each init → create/join → uninit cycle the port no
/// longer listens, the `smem-store` and `smem-bm-rankdown` threads are gone at once, threads
/// and descriptors return to baseline; the store client's detached reader and heartbeat threads
/// end on their own within milliseconds). Valgrind over every seed and `leak-*` input: 0 bytes
/// definitely or indirectly lost. The blocks in those reports belong to the store that is
/// *running* when libFuzzer's mid-run check (`__lsan_do_recoverable_leak_check`, after an input
/// with more mallocs than frees) looks: its event loop lives only in the store thread's frame
/// (moved into the thread's closure), not in any global, so LSan reaches it only through that
/// one thread's stack and registers. The whole tree can read as unreachable while that thread
/// serves only if the check did not scan that thread (LSan scans only the threads it could
/// suspend and find in its registry); that is the inferred cause, not yet observed: a 5-minute
/// campaign with the `leak-*` inputs in the corpus (20 484 runs) made 42 mid-run checks, each
/// scanning the live store thread among all 6–7 threads, with no report. Nothing is freed late or lost, so the driver adds no workaround; if
/// it recurs, run with `LSAN_OPTIONS=log_threads=1` and see whether the `smem-store` thread is
/// among the "Processing thread" lines of the failing check.
extern "C" fn uninit_at_exit() {
    unsafe { smem_bm_uninit(0) };
}

fn setup() -> State {
    unsafe {
        assert_eq!(atexit(uninit_at_exit), 0);
        assert_eq!(smem_init(0), 0);
        smem_set_log_level(3);
    }
    let url = format!("tcp://127.0.0.1:{}\0", free_port()).into_bytes();
    let mut cfg = std::mem::MaybeUninit::<smem_bm_config_t>::uninit();
    assert_eq!(unsafe { smem_bm_config_init(cfg.as_mut_ptr()) }, 0);
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.initTimeout = 5;
    cfg.createTimeout = 2;
    cfg.controlOperationTimeout = 2;
    cfg.rankId = 0;
    let rc = init_runtime(&url, &cfg);
    assert_eq!(rc, 0, "smem_bm_init of the fuzzing runtime: {}", last_err());
    State {
        arena: Arena::new(),
        objs: Vec::new(),
        stale: Vec::new(),
        url,
        cfg,
        base_fds: count_dir("/proc/self/fd"),
        base_maps: count_maps(),
    }
}

fn last_err() -> String {
    let p = unsafe { smem_get_last_err_msg() };
    if p.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A cursor over the input; reads past the end give zeros.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    fn done(&self) -> bool {
        self.data.is_empty()
    }
}

/// Where a copy's local or global side points.
#[derive(Clone, Copy, Debug)]
enum Place {
    Null,
    /// Arena buffer `i` at `off`.
    Buf(usize, u64),
    /// An address in (or around) object `k`'s span: window base + offset.
    Gva(usize, u64),
    /// Any address.
    Raw(u64),
}

impl State {
    fn handle(&self, inp: &mut Input<'_>) -> smem_bm_t {
        match inp.byte() % 8 {
            0 => std::ptr::null_mut(),
            1 => std::ptr::without_provenance_mut(inp.u64() as usize),
            2 => self
                .stale
                .get(inp.byte() as usize % self.stale.len().max(1))
                .copied()
                .unwrap_or(std::ptr::null_mut()),
            _ => self
                .objs
                .get(inp.byte() as usize % self.objs.len().max(1))
                .map_or(std::ptr::null_mut(), |o| o.1.h),
        }
    }

    fn size(inp: &mut Input<'_>) -> u64 {
        match inp.byte() % 8 {
            0 => 0,
            1 => u64::from(inp.byte()),
            2 => u64::from(inp.u16()),
            3 => u64::from(inp.u32() % (4 << 20)),
            4 => u64::MAX - u64::from(inp.byte()),
            5 => TWO_MIB - 1 + u64::from(inp.byte() % 3),
            _ => 1 + u64::from(inp.byte() % 64),
        }
    }

    fn place(&self, inp: &mut Input<'_>) -> Place {
        match inp.byte() % 6 {
            0 => Place::Null,
            1 | 2 => {
                let i = inp.byte() as usize % BUFS.len();
                Place::Buf(i, u64::from(inp.u32()) % BUFS[i] as u64)
            }
            3 | 4 if !self.objs.is_empty() => {
                let k = inp.byte() as usize % self.objs.len();
                let off = match inp.byte() % 4 {
                    0 => u64::from(inp.u32() % (8 << 20)),
                    1 => (TWO_MIB * u64::from(inp.byte() % 4))
                        .wrapping_sub(u64::from(inp.byte() % 2)),
                    2 => u64::from(inp.u32()),
                    _ => inp.u64(),
                };
                Place::Gva(k, off)
            }
            _ => Place::Raw(inp.u64()),
        }
    }

    fn gva_base(&self, k: usize) -> u64 {
        let h = self.objs[k].1.h;
        unsafe { smem_bm_ptr(h, 0) as u64 }
    }

    fn addr(&self, p: Place) -> u64 {
        match p {
            Place::Null => 0,
            Place::Buf(i, off) => self.arena.base() + self.arena.starts[i] as u64 + off,
            Place::Gva(k, off) => self.gva_base(k).wrapping_add(off),
            Place::Raw(a) => a,
        }
    }

    /// A local side the API may dereference for `span` bytes when the copy goes through
    /// handle `h`: an arena buffer that fits, NULL, an address in `h`'s own window (the runtime
    /// resolves those itself: a range overlapping the object's span must lie in one joined
    /// part), or an address whose range overflows (which the range checks must refuse).
    fn local(&self, p: Place, span: Option<u64>, h: smem_bm_t) -> u64 {
        match (p, span) {
            (Place::Null, _) => 0,
            (Place::Buf(i, off), Some(span))
                if off.checked_add(span).is_some_and(|e| e <= BUFS[i] as u64) =>
            {
                self.addr(p)
            }
            (Place::Gva(k, off), _)
                if self.objs[k].1.h == h && off < unsafe { smem_bm_get_local_mem_size(h) } =>
            {
                self.addr(p)
            }
            (_, Some(span)) if span > 0 => u64::MAX - (self.addr(p) % span),
            _ => u64::MAX,
        }
    }

    /// The model bytes at `[addr, addr+len)`: arena or a joined window. `None` if neither.
    fn model_slice(&mut self, addr: u64, len: u64) -> Option<&mut [u8]> {
        if let Some(off) = self.arena.contains(addr, len) {
            return Some(&mut self.arena.model[off..off + len as usize]);
        }
        for (_, o) in &mut self.objs {
            if let Some((base, model)) = &mut o.joined {
                if let Some(off) = addr.checked_sub(*base) {
                    if off
                        .checked_add(len)
                        .is_some_and(|e| e <= model.len() as u64)
                    {
                        let off = off as usize;
                        return Some(&mut model[off..off + len as usize]);
                    }
                }
            }
        }
        None
    }

    /// A successful copy of `len` bytes from `src` to `dst`: apply it to the model.
    fn model_copy(&mut self, src: u64, dst: u64, len: u64, what: &str) {
        let bytes = self
            .model_slice(src, len)
            .unwrap_or_else(|| {
                panic!(
                    "{what}: succeeded reading {len} bytes at {src:#x}, outside every known buffer"
                )
            })
            .to_vec();
        let d = self.model_slice(dst, len).unwrap_or_else(|| {
            panic!("{what}: succeeded writing {len} bytes at {dst:#x}, outside every known buffer")
        });
        d.copy_from_slice(&bytes);
    }

    fn check_windows(&self, what: &str) {
        for (id, o) in &self.objs {
            if let Some((base, model)) = &o.joined {
                let now = unsafe { std::slice::from_raw_parts(*base as *const u8, model.len()) };
                if now != &model[..] {
                    let i = now.iter().zip(model).position(|(a, b)| a != b).unwrap_or(0);
                    panic!("{what}: window of object {id} differs from the model at offset {i:#x}");
                }
            }
        }
    }

    fn forget(&mut self, h: smem_bm_t) {
        if let Some(i) = self.objs.iter().position(|o| o.1.h == h) {
            self.objs.swap_remove(i);
            self.stale.push(h);
            if self.stale.len() > 16 {
                self.stale.remove(0);
            }
        }
    }

    fn op(&mut self, inp: &mut Input<'_>) {
        let what;
        match inp.byte() % 20 {
            0 | 1 => {
                what = "smem_bm_create";
                let id = match inp.byte() % 4 {
                    0 => inp.u32(),
                    _ => u32::from(inp.byte()) % (IDS + 1),
                };
                let member = match inp.byte() % 4 {
                    0 => inp.u32(),
                    _ => 1,
                };
                let ops = match inp.byte() % 4 {
                    0 => inp.u32(),
                    _ => 1 << (inp.byte() % 3),
                };
                let sz = |inp: &mut Input<'_>| match inp.byte() % 8 {
                    0 => 0,
                    1 => u64::MAX - u64::from(inp.byte()),
                    2 => 1 << 63,
                    3 => TWO_MIB + 1,
                    _ => 1 + u64::from(inp.u32() % (2 << 20)),
                };
                let (dram, hbm) = (sz(inp), sz(inp));
                let flags = reserved(inp);
                let h = unsafe { smem_bm_create(id, member, ops, dram, hbm, flags) };
                if !h.is_null() {
                    assert!(
                        !self.objs.iter().any(|o| o.0 == id),
                        "{what}: a second object with id {id} was created"
                    );
                    self.objs.push((id, Obj { h, joined: None }));
                    bump(0);
                } else {
                    assert!(!last_err().is_empty(), "{what} failed without a message");
                }
            }
            2 => {
                what = "smem_bm_destroy";
                let h = self.handle(inp);
                unsafe { smem_bm_destroy(h) };
                self.forget(h);
            }
            3 | 4 => {
                what = "smem_bm_join";
                let h = self.handle(inp);
                let mut out: *mut c_void = std::ptr::null_mut();
                let p = if inp.byte() % 8 == 0 {
                    std::ptr::null_mut()
                } else {
                    &raw mut out
                };
                let rc = unsafe { smem_bm_join(h, reserved(inp), p) };
                if rc == 0 {
                    assert!(!p.is_null(), "{what}: succeeded with a NULL out-parameter");
                    let len = unsafe { smem_bm_get_local_mem_size(h) };
                    assert!(len > 0 && len % TWO_MIB == 0, "{what}: local size {len}");
                    let base = out as u64;
                    let now =
                        unsafe { std::slice::from_raw_parts(base as *const u8, len as usize) };
                    let o = self
                        .objs
                        .iter_mut()
                        .find(|o| o.1.h == h)
                        .unwrap_or_else(|| panic!("{what}: joined an object we do not hold"));
                    assert!(o.1.joined.is_none(), "{what}: joined twice");
                    o.1.joined = Some((base, now.to_vec()));
                    bump(1);
                }
            }
            5 => {
                what = "smem_bm_leave";
                let h = self.handle(inp);
                // Read the windows while they are still mapped.
                self.check_windows(what);
                let rc = unsafe { smem_bm_leave(h, reserved(inp)) };
                if rc == 0 {
                    let o = self
                        .objs
                        .iter_mut()
                        .find(|o| o.1.h == h)
                        .expect("left an unknown object");
                    assert!(
                        o.1.joined.take().is_some(),
                        "{what}: left without being joined"
                    );
                }
            }
            6..=10 => {
                what = "smem_bm_copy";
                let h = self.handle(inp);
                let t = match inp.byte() % 8 {
                    7 => inp.u32(),
                    n => u32::from(n % 5),
                };
                let size = Self::size(inp);
                let (sp, dp) = (self.place(inp), self.place(inp));
                // L2G/H2G: src is local; G2L/G2H: dest is local.
                let src_local = matches!(t, 0 | 3);
                let src = if src_local {
                    self.local(sp, Some(size), h)
                } else {
                    self.addr(sp)
                };
                let dst = if src_local {
                    self.addr(dp)
                } else {
                    self.local(dp, Some(size), h)
                };
                // Never SMEM_ASYNC_COPY_FLAG: the model applies a copy when the call returns.
                let flags = reserved(inp);
                let rc = unsafe {
                    smem_bm_copy(h, src as *const c_void, dst as *mut c_void, size, t, flags)
                };
                if rc == 0 {
                    assert!(t < 4 || t == 8, "{what}: copy type {t} accepted");
                    assert_eq!(flags, 0, "{what}: copy flags {flags:#x} accepted");
                    self.model_copy(src, dst, size, what);
                    bump(2);
                } else {
                    bump(3);
                }
            }
            11 | 12 => {
                what = "smem_bm_copy_2d";
                let h = self.handle(inp);
                let t = u32::from(inp.byte() % 5);
                let width = Self::size(inp) % (1 << 16);
                let height = u64::from(inp.byte() % 8);
                let spitch = (width + u64::from(inp.byte())).wrapping_sub(8);
                let dpitch = (width + u64::from(inp.byte())).wrapping_sub(8);
                let span = |p: u64| {
                    height
                        .checked_sub(1)
                        .and_then(|h| h.checked_mul(p))
                        .and_then(|v| v.checked_add(width))
                };
                let (sp, dp) = (self.place(inp), self.place(inp));
                let src_local = matches!(t, 0 | 3);
                let src = if src_local {
                    self.local(sp, span(spitch), h)
                } else {
                    self.addr(sp)
                };
                let dst = if src_local {
                    self.addr(dp)
                } else {
                    self.local(dp, span(dpitch), h)
                };
                let rc = unsafe {
                    smem_bm_copy_2d(
                        h,
                        src as *const c_void,
                        spitch,
                        dst as *mut c_void,
                        dpitch,
                        width,
                        height,
                        t,
                        0,
                    )
                };
                if rc == 0 {
                    assert!(
                        t < 4 && width > 0 && height > 0,
                        "{what}: bad arguments accepted"
                    );
                    for row in 0..height {
                        self.model_copy(src + row * spitch, dst + row * dpitch, width, what);
                    }
                    bump(2);
                } else {
                    bump(3);
                }
            }
            13 => {
                what = "smem_bm_ptr / get_local_mem_size / get_rank_id";
                let h = self.handle(inp);
                let peer = inp.u16();
                let p = unsafe { smem_bm_ptr(h, peer) };
                let n = unsafe { smem_bm_get_local_mem_size(h) };
                let known = self.objs.iter().any(|o| o.1.h == h);
                if !known {
                    assert!(
                        p.is_null() && n == 0,
                        "{what}: answered for an unknown handle"
                    );
                } else if peer >= 1 {
                    assert!(p.is_null(), "{what}: a window for peer {peer} of 1 member");
                }
                assert_eq!(unsafe { smem_bm_get_rank_id() }, 0, "{what}");
            }
            14 => {
                what = "last error";
                for _ in 0..2 {
                    let p = if inp.byte() % 2 == 0 {
                        unsafe { smem_get_last_err_msg() }
                    } else {
                        unsafe { smem_get_and_clear_last_err_msg() }
                    };
                    assert!(!p.is_null(), "{what}: NULL");
                    let s = unsafe { CStr::from_ptr(p) };
                    assert!(
                        s.to_bytes().len() < 1 << 16,
                        "{what}: {} bytes",
                        s.to_bytes().len()
                    );
                }
            }
            15 => {
                what = "logging";
                let level = match inp.byte() % 4 {
                    0 => inp.u32() as c_int,
                    n => c_int::from(n) + 1,
                };
                unsafe { smem_set_log_level(level) };
                let f: Option<unsafe extern "C" fn(c_int, *const c_char)> = if inp.byte() % 2 == 0 {
                    Some(count_logger)
                } else {
                    None
                };
                unsafe { smem_set_extern_logger(f) };
                unsafe { smem_set_log_level(3) };
            }
            16 => {
                what = "smem_set_ssl_option";
                let paths: [&[u8]; 3] = [b"/nonexistent/ca.pem\0", b"\0", b"/dev/null\0"];
                let s = |inp: &mut Input<'_>| match inp.byte() % 4 {
                    0 => std::ptr::null(),
                    n => paths[n as usize - 1].as_ptr().cast::<c_char>(),
                };
                let opt = smem_tls_option {
                    enableTls: inp.byte() % 3,
                    caFile: s(inp),
                    crlFile: s(inp),
                    certFile: s(inp),
                    keyFile: s(inp),
                    keyPassword: s(inp),
                };
                let p = if inp.byte() % 4 == 0 {
                    std::ptr::null()
                } else {
                    &raw const opt
                };
                unsafe { smem_set_ssl_option(p) };
                // Leave TLS off for the rest (the runtime is already up).
                let off = smem_tls_option {
                    enableTls: 0,
                    ..opt
                };
                unsafe { smem_set_ssl_option(&raw const off) };
            }
            17 => {
                what = "SHM calls";
                let mut cfg = std::mem::MaybeUninit::<smem_shm_config_t>::uninit();
                unsafe { smem_shm_config_init(cfg.as_mut_ptr()) };
                let mut gva: *mut c_void = std::ptr::null_mut();
                let h: smem_shm_t = unsafe {
                    smem_shm_create(
                        inp.u32() % 70,
                        inp.u32() % 4,
                        inp.u32() % 4,
                        Self::size(inp),
                        inp.u32(),
                        0,
                        &raw mut gva,
                    )
                };
                // Only handles the API gave out (or NULL) go back in.
                let b = &mut self.arena;
                let send = b.base() + b.starts[1] as u64;
                let recv = b.base() + b.starts[2] as u64;
                let send_size = inp.u32() % (BUFS[1] as u32 + 1);
                let recv_size = inp.u32() % (BUFS[2] as u32 + 1);
                unsafe {
                    smem_shm_control_barrier(h);
                    smem_shm_get_global_rank(h);
                    smem_shm_set_extra_context(h, send as *const c_void, send_size);
                    smem_shm_get_extra_context(h, recv as *mut c_void, recv_size);
                    smem_shm_control_allgather(
                        h,
                        send as *const c_char,
                        send_size,
                        recv as *mut c_char,
                        recv_size,
                    );
                    let mut reach = 0u32;
                    smem_shm_topology_can_reach(h, inp.u32(), &raw mut reach);
                    smem_shm_query_support_data_operation();
                    if !h.is_null() {
                        smem_shm_destroy(h, 0);
                    }
                }
                assert!(
                    h.is_null(),
                    "{what}: SHM object created without smem_shm_init"
                );
            }
            18 if inp.byte() % 8 == 0 => {
                // Tear the runtime down (objects die with it) and bring it back.
                what = "smem_bm_uninit + smem_bm_init";
                self.check_windows(what);
                unsafe { smem_bm_uninit(inp.u32()) };
                let hs: Vec<_> = self.objs.iter().map(|o| o.1.h).collect();
                for h in hs {
                    self.forget(h);
                }
                let rc = init_runtime(&self.url, &self.cfg);
                assert_eq!(rc, 0, "{what}: {}", last_err());
            }
            _ => {
                what = "smem_bm_init (repeat)";
                let mut cfg = self.cfg;
                if inp.byte() % 2 == 0 {
                    cfg.rankId = inp.u16();
                    cfg.initTimeout = u32::from(inp.byte() % 2);
                }
                let world = match inp.byte() % 3 {
                    0 => 1,
                    _ => inp.u32(),
                };
                let url = if inp.byte() % 4 == 0 {
                    &b"tcp://[::1]:0\0"[..]
                } else {
                    &self.url[..]
                };
                let rc = unsafe { smem_bm_init(url.as_ptr().cast(), world, 0, &raw const cfg) };
                if rc == 0 {
                    assert!(
                        world == 1 && cfg == self.cfg && url == &self.url[..],
                        "{what}: accepted other arguments"
                    );
                }
            }
        }
        self.arena.check(what);
    }
}

/// A reserved `flags` argument: 0 mostly (non-zero is refused, which would stop the sequence
/// from reaching joined windows), any value one time in eight.
fn reserved(inp: &mut Input<'_>) -> u32 {
    let raw = inp.u32();
    if raw % 8 == 0 { raw } else { 0 }
}

/// Runs one input. Panics (the fuzzer's crash) when an invariant is broken.
#[allow(clippy::disallowed_methods)] // The driver's own state lock, not a lock of smem.
pub(crate) fn run(data: &[u8]) {
    let mut guard = STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let st = guard.get_or_insert_with(setup);
    st.arena.reset();
    let mut inp = Input { data };
    for _ in 0..MAX_OPS {
        if inp.done() {
            break;
        }
        st.op(&mut inp);
    }
    st.check_windows("end of input");
    // Nothing survives an input: every object is destroyed, so descriptors and mappings
    // come back to where they were.
    let hs: Vec<_> = st.objs.iter().map(|o| o.1.h).collect();
    for h in hs {
        unsafe { smem_bm_destroy(h) };
        st.forget(h);
    }
    st.arena.check("cleanup");
    let (fds, maps) = (count_dir("/proc/self/fd"), count_maps());
    assert!(
        fds <= st.base_fds + 8,
        "descriptor leak: {fds} open, {} after init",
        st.base_fds
    );
    assert!(
        maps <= st.base_maps,
        "mapping leak: {maps} segment mappings with no object left, {} after init",
        st.base_maps
    );
}
