//! `smem_trans.h`: the transfer engine. Argument checks here; everything else is
//! [`smem_linux::trans`]'s.
//!
//! Handles: a `smem_trans_t` is the [`TransHandle`] value (never 0) cast to a pointer, never
//! dereferenced; a stale handle is a clean `SM_OBJECT_NOT_EXISTS`.

use std::ffi::{c_char, c_void};
use std::ptr;

use smem_core::ErrorCode;
use smem_linux::sys::copy::RawRange;
use smem_linux::trans::Direction::{Read, Write};
use smem_linux::trans::{self, Direction, Entry, Role, TransConfig, TransHandle};
use smem_linux::{Error, Result};
use static_assertions::{assert_eq_align, assert_eq_size, const_assert_eq};

use crate::ffi::{self, ffi_status, ffi_value, timeout};

/// `smem_trans_t`: an opaque engine handle.
pub type smem_trans_t = *mut c_void;

/// `SMEM_TRANS_NONE`.
pub const SMEM_TRANS_NONE: u32 = 0;
/// `SMEM_TRANS_SENDER`.
pub const SMEM_TRANS_SENDER: u32 = 1;
/// `SMEM_TRANS_RECEIVER`.
pub const SMEM_TRANS_RECEIVER: u32 = 2;
/// `SMEM_TRANS_BOTH`.
pub const SMEM_TRANS_BOTH: u32 = 3;
/// `SMEM_TRANS_BUTT`.
pub const SMEM_TRANS_BUTT: u32 = 4;

/// Most entries of one batch call.
pub const TRANS_BATCH_MAX: u32 = 65_536;

/// `smem_trans_config_t` (SPEC 6.2), the C layout exactly (C `bool` mirrored as `u8`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_snake_case)]
pub struct smem_trans_config_t {
    /// `smem_trans_role_t`; default `SMEM_TRANS_BOTH`.
    pub role: u32,
    /// Seconds; default 120.
    pub initTimeout: u32,
    /// Default 0.
    pub deviceId: u32,
    /// Default 0.
    pub flags: u32,
    /// `smem_bm_data_op_type` bits; default `HOST_TCP | SDMA`.
    pub dataOpType: u32,
    /// This process hosts the store; default false.
    pub startConfigServer: u8,
}

assert_eq_size!(smem_trans_config_t, [u8; 24]);
assert_eq_align!(smem_trans_config_t, u32);
const_assert_eq!(std::mem::offset_of!(smem_trans_config_t, dataOpType), 16);
const_assert_eq!(
    std::mem::offset_of!(smem_trans_config_t, startConfigServer),
    20
);

impl From<&TransConfig> for smem_trans_config_t {
    fn from(c: &TransConfig) -> Self {
        Self {
            role: c.role.raw(),
            initTimeout: u32::try_from(c.init_timeout.as_secs()).unwrap_or(u32::MAX),
            deviceId: c.device_id,
            flags: c.flags,
            dataOpType: c.data_ops,
            startConfigServer: u8::from(c.start_config_server),
        }
    }
}

impl smem_trans_config_t {
    /// The checked Rust form of these settings.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` for a bad role or a zero timeout.
    pub fn to_config(&self) -> Result<TransConfig> {
        Ok(TransConfig {
            role: Role::from_raw(self.role)?,
            init_timeout: timeout(self.initTimeout, "initTimeout")?,
            device_id: self.deviceId,
            flags: self.flags,
            data_ops: self.dataOpType,
            start_config_server: self.startConfigServer != 0,
        })
    }
}

fn handle(h: smem_trans_t) -> Result<TransHandle> {
    ffi::handle_arg(h).map(TransHandle)
}

fn addr_of(p: *const c_void) -> u64 {
    p.expose_provenance() as u64
}

fn reserved(flags: u32, what: &str) -> Result<()> {
    if flags != 0 {
        return Err(Error::invalid(format!(
            "{what}: flags {flags:#x} are reserved; pass 0"
        )));
    }
    Ok(())
}

fn no_stream(stream: *mut c_void) -> Result<()> {
    if !stream.is_null() {
        return Err(Error::new(
            ErrorCode::NotSupported,
            "a device stream was given, and this build has no device backend for the transfer engine (sim device); pass NULL to queue the transfer on the engine",
        ));
    }
    Ok(())
}

/// One entry from C pointers, checked.
///
/// # Safety
/// `local` is valid for `len` bytes for the transfer (until `smem_trans_wait` when queued).
unsafe fn entry(
    local: *const c_void,
    remote: *const c_void,
    len: usize,
    i: Option<usize>,
) -> Result<Entry> {
    let at = |what: &str| match i {
        Some(i) => format!("entry {i}: {what}"),
        None => what.to_owned(),
    };
    if len == 0 {
        return Err(Error::invalid(at("dataSize is 0")));
    }
    if local.is_null() {
        return Err(Error::invalid(at("the local address is NULL")));
    }
    if remote.is_null() {
        return Err(Error::invalid(at("the remote address is NULL")));
    }
    let at_local = addr_of(local);
    // SAFETY: forwarded contract.
    let local = unsafe { RawRange::new(at_local, len as u64) }.ok_or_else(|| {
        Error::invalid(at(&format!(
            "the local range [{at_local:#x}, +{len:#x}) wraps around the address space"
        )))
    })?;
    Ok(Entry {
        local,
        remote: addr_of(remote),
    })
}

/// The entries of a batch call.
///
/// # Safety
/// Each array is NULL or holds `n` readable elements.
unsafe fn batch(
    locals: *const *const c_void,
    remotes: *const *const c_void,
    sizes: *const usize,
    n: u32,
) -> Result<Vec<Entry>> {
    if n == 0 || n > TRANS_BATCH_MAX {
        return Err(Error::invalid(format!(
            "batchSize {n} is out of range 1..={TRANS_BATCH_MAX}"
        )));
    }
    let n = n as usize;
    // SAFETY: forwarded contract.
    let l = unsafe { ffi::array_arg(locals, n, "localAddrs") }?;
    // SAFETY: forwarded contract.
    let r = unsafe { ffi::array_arg(remotes, n, "remoteAddrs") }?;
    // SAFETY: forwarded contract.
    let s = unsafe { ffi::array_arg(sizes, n, "dataSizes") }?;
    // SAFETY: forwarded contract: each local range is valid for the transfer.
    (0..n)
        .map(|i| unsafe { entry(l[i], r[i], s[i], Some(i)) })
        .collect()
}

/// Runs (`submit` false) or queues a transfer.
///
/// # Safety
/// `peer` is NULL or a NUL-terminated string; the entries' local ranges are valid for the
/// transfer (until `smem_trans_wait` when queued).
unsafe fn go(
    h: smem_trans_t,
    dir: Direction,
    peer: *const c_char,
    entries: Vec<Entry>,
    submit: bool,
) -> Result<()> {
    let h = handle(h)?;
    // SAFETY: forwarded contract.
    let peer = unsafe { ffi::cstr_arg(peer, "remoteUniqueId") }?;
    if submit {
        trans::submit(h, dir, peer, entries)
    } else {
        trans::transfer(h, dir, peer, &entries)
    }
}

/// The local and remote sides of a transfer call, as C passed them.
enum Sides {
    /// `smem_trans_{write,read}[_submit]`: one range.
    One {
        local: *const c_void,
        remote: *const c_void,
        size: usize,
    },
    /// `smem_trans_batch_{write,read}[_submit]`: `n` ranges in three arrays.
    Batch {
        locals: *const *const c_void,
        remotes: *const *const c_void,
        sizes: *const usize,
        n: u32,
    },
}

impl Sides {
    fn one(local: *const c_void, remote: *const c_void, size: usize) -> Self {
        Self::One {
            local,
            remote,
            size,
        }
    }

    fn batch(
        locals: *const *const c_void,
        remotes: *const *const c_void,
        sizes: *const usize,
        n: u32,
    ) -> Self {
        Self::Batch {
            locals,
            remotes,
            sizes,
            n,
        }
    }
}

/// The body of every transfer call: checks `flags` and (for a `_submit` call, which has a
/// `stream`) the stream, then the entries, then runs or queues the transfer.
///
/// # Safety
/// The arrays of [`Sides::Batch`] are NULL or hold `n` elements; as [`go`].
unsafe fn run(
    what: &str,
    h: smem_trans_t,
    dir: Direction,
    peer: *const c_char,
    sides: Sides,
    stream: Option<*mut c_void>,
    flags: u32,
) -> Result<()> {
    reserved(flags, what)?;
    if let Some(stream) = stream {
        no_stream(stream)?;
    }
    let entries = match sides {
        Sides::One {
            local,
            remote,
            size,
        } => {
            // SAFETY: forwarded contract.
            vec![unsafe { entry(local, remote, size, None) }?]
        }
        Sides::Batch {
            locals,
            remotes,
            sizes,
            n,
        } => {
            // SAFETY: forwarded contract.
            unsafe { batch(locals, remotes, sizes, n) }?
        }
    };
    // SAFETY: forwarded contract.
    unsafe { go(h, dir, peer, entries, stream.is_some()) }
}

/// `smem_trans_config_init`.
///
/// # Safety
/// `config` is NULL or valid for writing a `smem_trans_config_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_trans_config_init(config: *mut smem_trans_config_t) -> i32 {
    ffi_status!("smem_trans_config_init", {
        // SAFETY: forwarded contract of this function.
        let out = unsafe { ffi::out_arg(config, "config") }?;
        out.write(smem_trans_config_t::from(&TransConfig::default()));
        Ok(())
    })
}

/// `smem_trans_init`.
///
/// # Safety
/// `config` is NULL or points to a readable `smem_trans_config_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_trans_init(config: *const smem_trans_config_t) -> i32 {
    ffi_status!("smem_trans_init", {
        // SAFETY: forwarded contract of this function.
        let c = unsafe { ffi::read_arg(config, "config") }?;
        trans::init(&c.to_config()?)
    })
}

/// `smem_trans_uninit`.
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_trans_uninit(flags: u32) {
    ffi_value!("smem_trans_uninit", (), {
        if flags != 0 {
            log::warn!(target: "smem::capi", "smem_trans_uninit: flags {flags:#x} are reserved and ignored");
        }
        trans::uninit();
        Ok(())
    })
}

/// `smem_trans_create`: NULL on failure.
///
/// # Safety
/// `store_url` and `unique_id` are NULL or NUL-terminated strings; `config` is NULL or points
/// to a readable `smem_trans_config_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_trans_create(
    store_url: *const c_char,
    unique_id: *const c_char,
    config: *const smem_trans_config_t,
) -> smem_trans_t {
    ffi_value!("smem_trans_create", ptr::null_mut(), {
        // SAFETY: forwarded contract of this function.
        let url = unsafe { ffi::cstr_arg(store_url, "storeUrl") }?;
        // SAFETY: forwarded contract of this function.
        let id = unsafe { ffi::cstr_arg(unique_id, "uniqueId") }?;
        // SAFETY: forwarded contract of this function.
        let c = unsafe { ffi::read_arg(config, "config") }?;
        let h = trans::create(url, id, &c.to_config()?)?;
        ffi::c_handle(h.0)
    })
}

/// `smem_trans_destroy`.
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_trans_destroy(h: smem_trans_t, flags: u32) {
    ffi_value!("smem_trans_destroy", (), {
        if flags != 0 {
            log::warn!(target: "smem::capi", "smem_trans_destroy: flags {flags:#x} are reserved and ignored");
        }
        trans::destroy(handle(h)?);
        Ok(())
    })
}

/// `smem_trans_malloc`: NULL on failure.
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_trans_malloc(h: smem_trans_t, capacity: usize) -> *mut c_void {
    ffi_value!("smem_trans_malloc", ptr::null_mut(), {
        let a = trans::malloc(handle(h)?, capacity as u64)?;
        Ok(ffi::gva_ptr(a))
    })
}

/// `smem_trans_free`.
///
/// # Safety
/// Always safe to call (the address is only compared).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_trans_free(h: smem_trans_t, address: *mut c_void) -> i32 {
    ffi_status!("smem_trans_free", {
        if address.is_null() {
            return Err(Error::invalid("address is NULL"));
        }
        trans::free(handle(h)?, addr_of(address))
    })
}

/// A range to register; a wrapping one is refused.
///
/// # Safety
/// `[addr, addr + len)` stays valid until it is deregistered (peers read and write it).
unsafe fn registered(addr: u64, len: usize) -> Result<RawRange<'static>> {
    // SAFETY: forwarded contract.
    unsafe { RawRange::new(addr, len as u64) }.ok_or_else(|| {
        Error::invalid(format!(
            "cannot register [{addr:#x}, +{len:#x}): the range is empty, NULL or wraps"
        ))
    })
}

/// `smem_trans_register_mem`.
///
/// # Safety
/// `[address, address + capacity)` is memory of this process that stays valid until it is
/// deregistered (peers read and write it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_trans_register_mem(
    h: smem_trans_t,
    address: *mut c_void,
    capacity: usize,
    flags: u32,
) -> i32 {
    ffi_status!("smem_trans_register_mem", {
        reserved(flags, "smem_trans_register_mem")?;
        if address.is_null() || capacity == 0 {
            return Err(Error::invalid(format!(
                "address {address:p} / capacity {capacity}: a non-NULL address and a capacity >= 1 are needed"
            )));
        }
        // SAFETY: the range stays valid until it is deregistered (this function's contract).
        let range = unsafe { registered(addr_of(address), capacity) }?;
        trans::register(handle(h)?, &[range])
    })
}

/// `smem_trans_batch_register_mem`.
///
/// # Safety
/// The arrays are NULL or hold `count` elements; each range as for
/// [`smem_trans_register_mem`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_trans_batch_register_mem(
    h: smem_trans_t,
    addresses: *mut *mut c_void,
    capacities: *mut usize,
    count: u32,
    flags: u32,
) -> i32 {
    ffi_status!("smem_trans_batch_register_mem", {
        reserved(flags, "smem_trans_batch_register_mem")?;
        if count == 0 || count > TRANS_BATCH_MAX {
            return Err(Error::invalid(format!(
                "count {count} is out of range 1..={TRANS_BATCH_MAX}"
            )));
        }
        // SAFETY: forwarded contract of this function.
        let a = unsafe { ffi::array_arg(addresses.cast_const(), count as usize, "addresses") }?;
        // SAFETY: forwarded contract of this function.
        let c = unsafe { ffi::array_arg(capacities.cast_const(), count as usize, "capacities") }?;
        let ranges = a
            .iter()
            .zip(c)
            // SAFETY: each range stays valid until it is deregistered (this function's
            // contract).
            .map(|(p, n)| unsafe { registered(addr_of(*p), *n) })
            .collect::<Result<Vec<_>>>()?;
        trans::register(handle(h)?, &ranges)
    })
}

/// `smem_trans_deregister_mem`.
///
/// # Safety
/// Always safe to call (the address is only compared).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_trans_deregister_mem(h: smem_trans_t, address: *mut c_void) -> i32 {
    ffi_status!("smem_trans_deregister_mem", {
        if address.is_null() {
            return Err(Error::invalid("address is NULL"));
        }
        trans::deregister(handle(h)?, addr_of(address))
    })
}

/// Defines a transfer call and its `_submit` twin: the same arguments plus a `stream` before
/// `flags`; the twin queues the transfer (completed by `smem_trans_wait`) where the call runs
/// it. The body is [`run`] with the direction, the peer argument and the [`Sides`] built from
/// the arguments.
macro_rules! transfer_calls {
    (
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => run($dir:ident, $peer:ident, $sides:expr);
        $(#[$submit_doc:meta])*
        fn $submit:ident;
    ) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(h: smem_trans_t, $($arg: $ty,)* flags: u32) -> i32 {
            ffi_status!(stringify!($name), {
                // SAFETY: forwarded contract of this function.
                unsafe { run(stringify!($name), h, $dir, $peer, $sides, None, flags) }
            })
        }

        $(#[$submit_doc])*
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $submit(
            h: smem_trans_t,
            $($arg: $ty,)*
            stream: *mut c_void,
            flags: u32,
        ) -> i32 {
            ffi_status!(stringify!($submit), {
                // SAFETY: forwarded contract of this function.
                unsafe { run(stringify!($submit), h, $dir, $peer, $sides, Some(stream), flags) }
            })
        }
    };
}

transfer_calls! {
    /// `smem_trans_write`.
    ///
    /// # Safety
    /// `local` is readable for `size` bytes; `peer` is NULL or a NUL-terminated string.
    fn smem_trans_write(
        local: *const c_void,
        peer: *const c_char,
        remote: *mut c_void,
        size: usize,
    ) => run(Write, peer, Sides::one(local, remote.cast_const(), size));
    /// `smem_trans_write_submit`.
    ///
    /// # Safety
    /// As [`smem_trans_write`], with `local` readable until this thread's `smem_trans_wait`.
    fn smem_trans_write_submit;
}

transfer_calls! {
    /// `smem_trans_batch_write`.
    ///
    /// # Safety
    /// The arrays are NULL or hold `n` elements; each local range is readable.
    fn smem_trans_batch_write(
        locals: *const *const c_void,
        peer: *const c_char,
        remotes: *mut *mut c_void,
        sizes: *mut usize,
        n: u32,
    ) => run(
        Write,
        peer,
        Sides::batch(locals, remotes.cast_const().cast(), sizes.cast_const(), n)
    );
    /// `smem_trans_batch_write_submit`.
    ///
    /// # Safety
    /// As [`smem_trans_batch_write`], local ranges valid until this thread's `smem_trans_wait`.
    fn smem_trans_batch_write_submit;
}

transfer_calls! {
    /// `smem_trans_read`.
    ///
    /// # Safety
    /// `local` is writable for `size` bytes and not otherwise accessed during the call.
    fn smem_trans_read(
        local: *mut c_void,
        peer: *const c_char,
        remote: *const c_void,
        size: usize,
    ) => run(Read, peer, Sides::one(local.cast_const(), remote, size));
    /// `smem_trans_read_submit`.
    ///
    /// # Safety
    /// As [`smem_trans_read`], with `local` writable until this thread's `smem_trans_wait`.
    fn smem_trans_read_submit;
}

transfer_calls! {
    /// `smem_trans_batch_read`.
    ///
    /// # Safety
    /// The arrays are NULL or hold `n` elements; each local range is writable, and they do not
    /// overlap.
    fn smem_trans_batch_read(
        locals: *mut *mut c_void,
        peer: *const c_char,
        remotes: *const *const c_void,
        sizes: *mut usize,
        n: u32,
    ) => run(
        Read,
        peer,
        Sides::batch(locals.cast_const().cast(), remotes, sizes.cast_const(), n)
    );
    /// `smem_trans_batch_read_submit`.
    ///
    /// # Safety
    /// As [`smem_trans_batch_read`], local ranges valid until this thread's `smem_trans_wait`.
    fn smem_trans_batch_read_submit;
}

/// `smem_trans_wait`.
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_trans_wait(h: smem_trans_t) -> i32 {
    ffi_status!("smem_trans_wait", { trans::wait(handle(h)?) })
}
