//! The `acl` device backend against the stub runtime `tests/acl_stub/acl_stub.c` (built here with
//! `cc -shared -fPIC`): loading (and a missing symbol), selection by `SMEM_DEVICE` /
//! `ASCEND_HOME_PATH`, allocation and every copy kind (1D and 2D, from a thread that never set
//! the device), IPC sharing between two real processes (allowed and refused), a whole BM object
//! through the runtime, and every ACL call failing on demand (`ACL_STUB_FAIL`) turned into an
//! smem error that names the call and its ACL code.
//!
//! Anything that needs env vars runs in a child process (this binary again, `--exact <test>`,
//! with `ACL_TEST_ROLE` set), so no test changes the environment of the test process.
#![allow(unsafe_code)] // copies through `Device::copy`, an `unsafe fn` taking raw pointers

#[path = "common/copy.rs"]
mod copy;
use copy::raw_copy;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use smem_core::ErrorCode;
use smem_linux::device::{
    self, AclDevice, CopyDirection, Device, DeviceDescriptor, RawRange, Shape2d,
};

const M2: u64 = 2 * 1024 * 1024;
const ROLE: &str = "ACL_TEST_ROLE";

/// The stub's directory layout: `<dir>/lib64/libascendcl.so` (full) and
/// `<dir>/partial/lib64/libascendcl.so` (no `aclrtIpcMemClose`).
#[allow(clippy::disallowed_methods)] // The test's own cell, not a lock of smem.
fn stub_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        if let Ok(h) = std::env::var("ACL_TEST_STUB_HOME") {
            return PathBuf::from(h);
        }
        // One directory for every run; each build goes to a private name first and is renamed
        // into place, so concurrent test processes never see a half-written library.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("acl-stub");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/acl_stub/acl_stub.c");
        for (sub, extra) in [
            ("lib64", None),
            ("partial/lib64", Some("-DSTUB_OMIT_IPC_CLOSE")),
        ] {
            let out = dir.join(sub);
            std::fs::create_dir_all(&out).expect("mkdir");
            let mut cc = Command::new("cc");
            cc.args([
                "-std=gnu99",
                "-O1",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-shared",
                "-fPIC",
            ]);
            if let Some(x) = extra {
                cc.arg(x);
            }
            let tmp = out.join(format!(".libascendcl.so.{}", std::process::id()));
            let st = cc.arg(&src).arg("-o").arg(&tmp).status().expect("run cc");
            assert!(st.success(), "building the ACL stub failed");
            std::fs::rename(&tmp, out.join("libascendcl.so")).expect("rename the stub");
        }
        dir
    })
}

fn stub_lib() -> String {
    stub_home()
        .join("lib64/libascendcl.so")
        .to_string_lossy()
        .into_owned()
}

/// Runs test `name` of this binary as a child with `role` and `env`; returns (success, output).
fn child(name: &str, role: &str, env: &[(&str, &str)]) -> (bool, String) {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env("ACL_TEST_STUB_HOME", stub_home())
        .env_remove("SMEM_DEVICE")
        .env_remove("ASCEND_HOME_PATH")
        .env_remove("ACL_STUB_FAIL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = wait(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    (out.0, out.1)
}

fn wait(mut c: Child) -> (bool, String) {
    let start = Instant::now();
    while c.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = c.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = c.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

fn open() -> AclDevice {
    AclDevice::open_path(&stub_lib(), 0).expect("open the stub")
}

/// `len` bytes of device memory at `addr`, inside a segment the test keeps alive while it
/// copies.
fn dev_mem(addr: u64, len: u64) -> RawRange<'static> {
    // SAFETY: every caller passes a range inside a device segment it holds for the copy.
    unsafe { RawRange::new(addr, len) }.expect("device range")
}

fn h2d(dev: &dyn Device, dst: u64, data: &[u8]) {
    let mut data = data.to_vec();
    let len = data.len() as u64;
    dev.copy(
        RawRange::from_mut(&mut data),
        dev_mem(dst, len),
        CopyDirection::HostToDevice,
    )
    .expect("H2D");
}

fn d2h(dev: &dyn Device, src: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    dev.copy(
        dev_mem(src, len as u64),
        RawRange::from_mut(&mut out),
        CopyDirection::DeviceToHost,
    )
    .expect("D2H");
    out
}

#[test]
#[cfg_attr(miri, ignore)]
fn load_and_missing_symbol() {
    let dev = open();
    assert_eq!(dev.name(), "acl");
    assert_eq!(dev.library_path(), stub_lib());
    let partial = stub_home().join("partial/lib64/libascendcl.so");
    let e = AclDevice::open_path(&partial.to_string_lossy(), 0).expect_err("partial stub");
    assert_eq!(e.code(), ErrorCode::NotSupported);
    assert!(e.message().contains("aclrtIpcMemClose"), "{e}");
    assert!(e.message().contains(&*partial.to_string_lossy()), "{e}");
    let e = AclDevice::open_path("/nonexistent/libascendcl.so", 0).expect_err("absent");
    assert_eq!(e.code(), ErrorCode::NotSupported);
    assert!(e.message().contains("/nonexistent/libascendcl.so"), "{e}");
}

/// `SMEM_DEVICE` and `ASCEND_HOME_PATH` (children): default acl when the runtime loads, sim
/// otherwise; explicit acl without a runtime is a clear error; `runtime/lib64` is searched.
#[test]
#[cfg_attr(miri, ignore)]
fn selection_by_env() {
    const ME: &str = "selection_by_env";
    if let Some(r) = role() {
        let got = device::select(0);
        match r.as_str() {
            "default-acl" | "runtime-lib64" => {
                assert_eq!(got.expect("acl").name(), "acl");
            }
            "default-sim" => assert_eq!(got.expect("sim").name(), "sim"),
            "explicit-sim" => assert_eq!(got.expect("sim").name(), "sim"),
            "explicit-acl-missing" => {
                let e = got.expect_err("no runtime");
                assert_eq!(e.code(), ErrorCode::NotSupported);
                let m = e.message();
                assert!(
                    m.contains("SMEM_DEVICE=acl") && m.contains("ASCEND_HOME_PATH"),
                    "{m}"
                );
                assert!(m.contains("/nonexistent/lib64/libascendcl.so"), "{m}");
            }
            "default-acl-broken" => {
                let e = got.expect_err("device does not open");
                let m = e.message();
                assert!(
                    m.contains("aclrtSetDevice") && m.contains("SMEM_DEVICE=sim"),
                    "{m}"
                );
            }
            "explicit-acl-partial" => {
                let e = got.expect_err("partial runtime");
                assert!(e.message().contains("aclrtIpcMemClose"), "{e}");
            }
            other => panic!("role {other}"),
        }
        println!("role-ok");
        return;
    }
    let home = stub_home().to_string_lossy().into_owned();
    let partial = stub_home().join("partial").to_string_lossy().into_owned();
    // `runtime/lib64` layout: a directory whose lib64 is absent.
    let rt = stub_home().join("rt-layout/runtime");
    std::fs::create_dir_all(&rt).expect("mkdir");
    let link = rt.join("lib64");
    if !link.exists() {
        std::os::unix::fs::symlink(stub_home().join("lib64"), &link).expect("symlink");
    }
    let rt_home = stub_home().join("rt-layout").to_string_lossy().into_owned();
    let cases: [(&str, Vec<(&str, &str)>); 7] = [
        ("default-acl", vec![("ASCEND_HOME_PATH", &home)]),
        (
            "default-acl-broken",
            vec![
                ("ASCEND_HOME_PATH", &home),
                ("ACL_STUB_FAIL", "aclrtSetDevice=507033"),
            ],
        ),
        ("runtime-lib64", vec![("ASCEND_HOME_PATH", &rt_home)]),
        ("default-sim", vec![("ASCEND_HOME_PATH", "/nonexistent")]),
        (
            "explicit-sim",
            vec![("ASCEND_HOME_PATH", &home), ("SMEM_DEVICE", "sim")],
        ),
        (
            "explicit-acl-missing",
            vec![("ASCEND_HOME_PATH", "/nonexistent"), ("SMEM_DEVICE", "acl")],
        ),
        (
            "explicit-acl-partial",
            vec![("ASCEND_HOME_PATH", &partial), ("SMEM_DEVICE", "acl")],
        ),
    ];
    for (r, env) in cases {
        let (ok, out) = child(ME, r, &env);
        assert!(ok && out.contains("role-ok"), "{r}: {out}");
    }
}

/// Allocation and every copy kind through ACL, including from a thread that never set the
/// device (the stub refuses memory calls without a current context, like ACL).
#[test]
#[cfg_attr(miri, ignore)]
fn alloc_and_copies() {
    let dev: Arc<dyn Device> = Arc::new(open());
    let a = dev.alloc("a", M2).expect("alloc a");
    let b = dev.alloc("b", 2 * M2).expect("alloc b");
    assert!(
        a.mapping_fd().is_none(),
        "device memory is not host-mappable"
    );
    let (pa, pb) = (
        a.device_addr().expect("addr"),
        b.device_addr().expect("addr"),
    );
    assert_eq!(a.len(), M2);
    match a.descriptor() {
        DeviceDescriptor::AclIpc { len, key } => {
            assert_eq!(len, M2);
            assert!(key.starts_with("stub-"), "{key}");
        }
        other => panic!("{other}"),
    }
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    h2d(&*dev, pa + 100, &data);
    assert_eq!(d2h(&*dev, pa + 100, data.len()), data);
    // D2D into b, read back on another thread.
    // Both ranges are inside their segments (4096 bytes at offsets < 2 MiB).
    dev.copy(
        dev_mem(pa + 100, 4096),
        dev_mem(pb + M2, 4096),
        CopyDirection::DeviceToDevice,
    )
    .expect("D2D");
    let d2 = Arc::clone(&dev);
    let back = std::thread::spawn(move || d2h(&*d2, pb + M2, 4096))
        .join()
        .expect("thread");
    assert_eq!(back, data);
    // 2D: H2D (aclrtMemcpy2d), D2D (row by row), D2H (aclrtMemcpy2d).
    let mut rows: Vec<u8> = (0..8 * 64).map(|i| (i % 251) as u8).collect();
    // 8 rows of 48 bytes, pitch 64 on the host (512 bytes) and 128 on the device.
    dev.copy_2d(
        RawRange::from_mut(&mut rows),
        dev_mem(pa, 1024),
        Shape2d::new(64, 128, 48, 8),
        CopyDirection::HostToDevice,
    )
    .expect("2D H2D");
    // The same shape, device to device (pitch 128 to 96), inside both segments.
    dev.copy_2d(
        dev_mem(pa, 1024),
        dev_mem(pb, 1024),
        Shape2d::new(128, 96, 48, 8),
        CopyDirection::DeviceToDevice,
    )
    .expect("2D D2D");
    let mut out = vec![0xEEu8; 8 * 64];
    // 8 rows of 48 bytes from the device (pitch 96) to `out` (pitch 64).
    dev.copy_2d(
        dev_mem(pb, 1024),
        RawRange::from_mut(&mut out),
        Shape2d::new(96, 64, 48, 8),
        CopyDirection::DeviceToHost,
    )
    .expect("2D D2H");
    for r in 0..8 {
        assert_eq!(
            out[r * 64..r * 64 + 48],
            rows[r * 64..r * 64 + 48],
            "row {r}"
        );
        assert!(out[r * 64 + 48..r * 64 + 64].iter().all(|&x| x == 0xEE));
    }
    drop((a, b));
}

/// Two real processes: the parent allocates and allows the child's pid; the child imports the
/// key and writes; the parent reads the bytes. A child that is not allowed gets a clear error.
#[test]
#[cfg_attr(miri, ignore)]
fn ipc_between_processes() {
    const ME: &str = "ipc_between_processes";
    if let Some(r) = role() {
        let dev = open();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).expect("stdin");
        let bytes: Vec<u8> = (0..line.trim().len() / 2)
            .map(|i| u8::from_str_radix(&line.trim()[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let desc = DeviceDescriptor::decode(&bytes).expect("descriptor");
        let got = dev.open_peer(&desc);
        if r == "refused" {
            let e = got.expect_err("not on the allow-list");
            assert!(e.message().contains("aclrtIpcMemImportByKey"), "{e}");
            assert!(e.message().contains("207001"), "{e}");
        } else {
            let seg = got.expect("import");
            assert_eq!(seg.len(), M2);
            let p = seg.device_addr().expect("addr");
            assert_eq!(d2h(&dev, p, 5), b"owner");
            h2d(&dev, p + M2 - 5, b"child");
        }
        println!("role-ok");
        return;
    }
    let dev = open();
    let seg = dev.alloc("shared", M2).expect("alloc");
    let p = seg.device_addr().expect("addr");
    h2d(&dev, p, b"owner");
    let hex: String = seg
        .descriptor()
        .encode()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for r in ["allowed", "refused"] {
        let exe = std::env::current_exe().expect("exe");
        let mut c = Command::new(exe)
            .args(["--exact", ME, "--nocapture", "--test-threads=1"])
            .env(ROLE, r)
            .env("ACL_TEST_STUB_HOME", stub_home())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        if r == "allowed" {
            let pid = i32::try_from(c.id()).expect("pid");
            dev.share(&seg, &[pid]).expect("share");
        }
        let mut stdin = c.stdin.take().expect("stdin");
        writeln!(stdin, "{hex}").expect("write");
        drop(stdin);
        let (ok, out) = wait(c);
        assert!(ok && out.contains("role-ok"), "{r}: {out}");
    }
    assert_eq!(d2h(&dev, p + M2 - 5, 5), b"child");
}

/// Every ACL call failing on demand becomes an smem error naming the call and the code.
#[test]
#[cfg_attr(miri, ignore)]
fn injected_failures_are_named() {
    const ME: &str = "injected_failures_are_named";
    if let Some(r) = role() {
        let code = "424242";
        let check = |e: smem_linux::Error, call: &str| {
            let m = e.message();
            assert!(m.contains(call) && m.contains(code), "{call}: {e}");
            println!("error: {e}");
        };
        let opened = AclDevice::open_path(&stub_lib(), 0);
        let dev = match r.as_str() {
            "aclInit" | "aclrtSetDevice" | "aclrtGetCurrentContext" => {
                let e = opened.expect_err("open must fail");
                assert_eq!(e.code(), ErrorCode::Error);
                check(e, &r);
                println!("role-ok");
                return;
            }
            _ => Arc::new(opened.expect("open")),
        };
        match r.as_str() {
            "aclrtMalloc" => {
                let e = dev.alloc("x", M2).expect_err("malloc");
                assert_eq!(e.code(), ErrorCode::MallocFailed);
                check(e, &r);
            }
            "aclrtIpcMemGetExportKey" => check(dev.alloc("x", M2).expect_err("export"), &r),
            "aclrtIpcMemSetImportPid" => {
                let seg = dev.alloc("x", M2).expect("alloc");
                check(dev.share(&seg, &[1]).expect_err("share"), &r);
            }
            "aclrtIpcMemImportByKey" => {
                let seg = dev.alloc("x", M2).expect("alloc");
                check(dev.open_peer(&seg.descriptor()).expect_err("import"), &r);
            }
            "aclrtDeviceGetBareTgid" => check(dev.sharing_pid().expect_err("tgid"), &r),
            "aclrtFree" | "aclrtIpcMemClose" => {
                // Release paths cannot return an error: they log it (checked by the parent).
                smem_linux::logging::init();
                drop(dev.alloc("x", M2).expect("alloc"));
            }
            "aclrtMemcpy" | "aclrtMemcpy2d" => {
                let seg = dev.alloc("x", M2).expect("alloc");
                let p = seg.device_addr().expect("addr");
                let mut buf = [1u8; 64];
                let to = dev_mem(p, M2);
                // 64 bytes (or 2 rows of 32) into a 2 MiB device segment.
                let e = if r == "aclrtMemcpy" {
                    dev.copy(
                        RawRange::from_mut(&mut buf),
                        to,
                        CopyDirection::HostToDevice,
                    )
                } else {
                    dev.copy_2d(
                        RawRange::from_mut(&mut buf),
                        to,
                        Shape2d::new(32, 64, 32, 2),
                        CopyDirection::HostToDevice,
                    )
                }
                .expect_err("copy");
                check(e, &r);
                // The 2nd call of the same function succeeds (":1" injected the first only).
                dev.copy(
                    RawRange::from_mut(&mut buf),
                    to,
                    CopyDirection::HostToDevice,
                )
                .expect("later copies work");
            }
            "aclrtSetCurrentContext" => {
                let seg = dev.alloc("x", M2).expect("alloc");
                let p = seg.device_addr().expect("addr");
                let d = Arc::clone(&dev);
                let e = std::thread::spawn(move || {
                    let mut buf = [1u8; 8];
                    // 8 bytes into a 2 MiB device segment.
                    d.copy(
                        RawRange::from_mut(&mut buf),
                        dev_mem(p, 8),
                        CopyDirection::HostToDevice,
                    )
                })
                .join()
                .expect("thread")
                .expect_err("no context on the new thread");
                check(e, &r);
            }
            other => panic!("role {other}"),
        }
        println!("role-ok");
        return;
    }
    let calls = [
        "aclInit",
        "aclrtSetDevice",
        "aclrtGetCurrentContext",
        "aclrtMalloc",
        "aclrtIpcMemGetExportKey",
        "aclrtIpcMemSetImportPid",
        "aclrtIpcMemImportByKey",
        "aclrtDeviceGetBareTgid",
        "aclrtMemcpy",
        "aclrtMemcpy2d",
        "aclrtSetCurrentContext",
        "aclrtFree",
        "aclrtIpcMemClose",
    ];
    for call in calls {
        // Opening probes the thread's context first (an ignored failure): fail every call.
        let spec = if call == "aclrtGetCurrentContext" {
            format!("{call}=424242")
        } else {
            format!("{call}:1=424242")
        };
        let (ok, out) = child(ME, call, &[("ACL_STUB_FAIL", &spec)]);
        assert!(ok && out.contains("role-ok"), "{call}: {out}");
        let named = format!("{call} failed with ACL error 424242");
        assert!(out.contains(&named), "{call}: {out}");
    }
}

/// A one-rank BM object through the runtime on the acl backend: the HBM part is device memory
/// (the GVA stays reserved), copies into it go through ACL; an injected `aclrtMalloc` failure
/// makes `bm_create` fail naming the call.
#[test]
#[cfg_attr(miri, ignore)]
fn bm_object_on_acl() {
    const ME: &str = "bm_object_on_acl";
    if let Some(r) = role() {
        use smem_linux::runtime::{self, BmConfig};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let cfg = BmConfig {
            rank_id: 0,
            init_timeout: Duration::from_secs(10),
            create_timeout: Duration::from_secs(10),
            control_timeout: Duration::from_secs(10),
            ..BmConfig::default()
        };
        runtime::bm_init(&format!("tcp://127.0.0.1:{port}"), 1, 0, &cfg).expect("init");
        let created = runtime::bm_create(0, 1, 1, M2, M2, 0);
        if r == "malloc-fails" {
            let e = created.expect_err("create must fail");
            assert!(
                e.message().contains("aclrtMalloc") && e.message().contains("424242"),
                "{e}"
            );
            runtime::bm_uninit(0);
            println!("role-ok");
            return;
        }
        let h = created.expect("create");
        let base = runtime::bm_join(h, 0).expect("join");
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 253) as u8).collect();
        // L2G = 0, G2L = 1, G2H = 2, H2G = 3.
        // SAFETY: local buffers of the given sizes; the global side is validated.
        unsafe { raw_copy(h, data.as_ptr() as u64, base + 64, 1000, 3) }.expect("H2G into HBM");
        let mut back = vec![0u8; 1000];
        // SAFETY: as above.
        unsafe { raw_copy(h, base + 64, back.as_mut_ptr() as u64, 1000, 2) }.expect("G2H from HBM");
        assert_eq!(back, data);
        // HBM -> DRAM inside the object (local side in the object's span).
        // SAFETY: both sides inside the joined window (validated).
        unsafe { raw_copy(h, base + 64, base + M2 + 8, 1000, 0) }.expect("L2G HBM to DRAM");
        let mut dram = vec![0u8; 1000];
        // SAFETY: as above.
        unsafe { raw_copy(h, base + M2 + 8, dram.as_mut_ptr() as u64, 1000, 2) }
            .expect("G2H from DRAM");
        assert_eq!(dram, data);
        runtime::bm_destroy(h).expect("destroy");
        runtime::bm_uninit(0);
        println!("role-ok");
        return;
    }
    let home = stub_home().to_string_lossy().into_owned();
    let trace = stub_home().join(format!("trace-bm-{}", std::process::id()));
    let _ = std::fs::remove_file(&trace);
    let t = trace.to_string_lossy().into_owned();
    let base = [
        ("ASCEND_HOME_PATH", home.as_str()),
        ("SMEM_DEVICE", "acl"),
        ("ACL_STUB_TRACE", t.as_str()),
    ];
    let (ok, out) = child(ME, "ok", &base);
    assert!(ok && out.contains("role-ok"), "{out}");
    let calls = std::fs::read_to_string(&trace).expect("trace");
    let _ = std::fs::remove_file(&trace);
    for call in [
        "aclrtMalloc",
        "aclrtIpcMemGetExportKey",
        "aclrtMemcpy",
        "aclrtFree",
    ] {
        assert!(called(&calls, call), "{call} not called:\n{calls}");
    }
    let mut env = base.to_vec();
    env.push(("ACL_STUB_FAIL", "aclrtMalloc=424242"));
    let (ok, out) = child(ME, "malloc-fails", &env);
    assert!(ok && out.contains("role-ok"), "{out}");
}

/// SHM honours `deviceId` (README "C API decisions"): init opens that device through the
/// backend, as BM init does, so a device the runtime does not have fails init, naming the ACL
/// call; an existing one is opened (the SHM windows themselves are host memory).
#[test]
#[cfg_attr(miri, ignore)]
fn shm_init_opens_its_device() {
    const ME: &str = "shm_init_opens_its_device";
    if let Some(r) = role() {
        use smem_linux::runtime::shm::{self, ShmConfig};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let cfg = ShmConfig {
            init_timeout: Duration::from_secs(10),
            ..ShmConfig::default()
        };
        // The stub has devices 0..63.
        let device = if r == "absent" { 70 } else { 5 };
        let got = shm::shm_init(&url, 1, 0, device, &cfg);
        if r == "absent" {
            let e = got.expect_err("device 70 does not exist");
            assert!(
                e.message().contains("aclrtSetDevice") && e.message().contains("70"),
                "{e}"
            );
        } else {
            got.expect("init on device 5");
            shm::shm_uninit(0);
        }
        println!("role-ok");
        return;
    }
    let home = stub_home().to_string_lossy().into_owned();
    let trace = stub_home().join(format!("trace-shm-{}", std::process::id()));
    let _ = std::fs::remove_file(&trace);
    let t = trace.to_string_lossy().into_owned();
    let env = [
        ("ASCEND_HOME_PATH", home.as_str()),
        ("SMEM_DEVICE", "acl"),
        ("ACL_STUB_TRACE", t.as_str()),
    ];
    let (ok, out) = child(ME, "ok", &env);
    assert!(ok && out.contains("role-ok"), "{out}");
    let calls = std::fs::read_to_string(&trace).expect("trace");
    let _ = std::fs::remove_file(&trace);
    assert!(called(&calls, "aclrtSetDevice"), "{calls}");
    let (ok, out) = child(ME, "absent", &env);
    assert!(ok && out.contains("role-ok"), "{out}");
}

/// Whether the stub trace (`NAME dev=D` lines) shows a call of `call`.
fn called(trace: &str, call: &str) -> bool {
    trace.lines().any(|l| l.split(' ').next() == Some(call))
}

/// The application's choice of device on its thread survives smem's calls: opening device 5
/// and copying through it on a thread that uses device 2 switches to 5 for the calls only.
#[test]
#[cfg_attr(miri, ignore)]
fn thread_context_is_restored() {
    const ME: &str = "thread_context_is_restored";
    if role().is_some() {
        let dev2 = AclDevice::open_path(&stub_lib(), 2).expect("dev 2");
        let dev5 = AclDevice::open_path(&stub_lib(), 5).expect("dev 5");
        let seg5 = dev5.alloc("five", M2).expect("alloc on 5");
        h2d(&dev5, seg5.device_addr().expect("addr"), b"five");
        let seg2 = dev2.alloc("two", M2).expect("alloc on 2");
        drop((seg5, seg2));
        println!("role-ok");
        return;
    }
    let trace = stub_home().join(format!("trace-ctx-{}", std::process::id()));
    let _ = std::fs::remove_file(&trace);
    let t = trace.to_string_lossy().into_owned();
    let (ok, out) = child(ME, "ctx", &[("ACL_STUB_TRACE", &t)]);
    assert!(ok && out.contains("role-ok"), "{out}");
    let calls = std::fs::read_to_string(&trace).expect("trace");
    let _ = std::fs::remove_file(&trace);
    let lines: Vec<&str> = calls.lines().collect();
    let at = |l: &str| lines.iter().position(|x| *x == l);
    // Device 5's memory calls ran in its context ...
    let m5 = at("aclrtMalloc dev=5").unwrap_or_else(|| panic!("{calls}"));
    assert!(at("aclrtMemcpy dev=5").is_some(), "{calls}");
    // ... and device 2's allocation found the thread back on device 2 without switching.
    let m2 = at("aclrtMalloc dev=2").unwrap_or_else(|| panic!("{calls}"));
    assert!(m5 < m2, "{calls}");
    assert_eq!(lines[m2 - 1], "aclrtGetCurrentContext dev=2", "{calls}");
}
