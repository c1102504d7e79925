//! Helpers shared by the capi integration tests that build and run C programs: locating (or
//! building) `libsmem.so` / `libsmem.a`, running commands with a deadline.
#![allow(dead_code, unreachable_pub)]

pub mod ranks;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Native libraries a program linking `libsmem.a` needs (as `rustc --print native-static-libs`
/// reports for a std staticlib on Linux).
pub const STATIC_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// The capi crate directory.
pub fn capi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `capi/include`.
pub fn include_dir() -> PathBuf {
    capi_dir().join("include")
}

/// `capi/tests/c`.
pub fn c_dir() -> PathBuf {
    capi_dir().join("tests").join("c")
}

/// A fresh scratch directory under cargo's per-target temp dir.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "capi-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn has_libs(dir: &Path) -> bool {
    dir.join("libsmem.so").is_file() && dir.join("libsmem.a").is_file()
}

/// The directory holding `libsmem.so` and `libsmem.a` built from this tree.
///
/// In order: `$SMEM_LIB_DIR`; the `deps/` folder of the profile this test was built with
/// (cargo builds the cdylib and staticlib there along with the rlib the test links, so they
/// are as fresh as the test); that profile folder; otherwise
/// `cargo build -p smem-capi --release` into a private target dir, bounded by 10 minutes.
pub fn lib_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SMEM_LIB_DIR") {
        let dir = PathBuf::from(dir);
        assert!(
            has_libs(&dir),
            "SMEM_LIB_DIR={} has no libsmem.so + libsmem.a",
            dir.display()
        );
        return dir;
    }
    let exe = std::env::current_exe().expect("current_exe");
    if let Some(deps) = exe.parent() {
        if has_libs(deps) {
            return deps.to_path_buf();
        }
        if let Some(profile) = deps.parent() {
            if has_libs(profile) {
                return profile.to_path_buf();
            }
        }
    }
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capi-build");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "smem-capi", "--release", "--target-dir"])
        .arg(&target)
        .current_dir(capi_dir());
    let out = run(&mut cmd, Duration::from_secs(600));
    assert!(
        out.status.success(),
        "cargo build -p smem-capi --release failed:\n{}",
        out.stderr
    );
    let dir = target.join("release");
    assert!(has_libs(&dir), "no libsmem.so/.a in {}", dir.display());
    dir
}

/// The outcome of [`run`].
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
}

/// Spawns `cmd` with stdout/stderr captured in files (no pipe can fill up).
pub fn spawn_captured(cmd: &mut Command, dir: &Path, tag: &str) -> (Child, PathBuf, PathBuf) {
    let (o, e) = (
        dir.join(format!("{tag}.out")),
        dir.join(format!("{tag}.err")),
    );
    let child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&o).expect("stdout file"))
        .stderr(fs::File::create(&e).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {cmd:?}: {err}"));
    (child, o, e)
}

/// Waits for `child` until `deadline`; kills it (and returns `None`) when it passes.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion within `limit`, panicking (after killing it) when it takes longer.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let dir = scratch("run");
    let (mut child, o, e) = spawn_captured(cmd, &dir, "cmd");
    let status = wait_until(&mut child, Instant::now() + limit);
    let stdout = fs::read_to_string(&o).unwrap_or_default();
    let stderr = fs::read_to_string(&e).unwrap_or_default();
    let _ = fs::remove_dir_all(&dir);
    let Some(status) = status else {
        panic!("{cmd:?} did not finish within {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs `cmd` and asserts success, returning its output.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> Output {
    let out = run(cmd, limit);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

/// C compiler flags of the header checks.
pub const C_FLAGS: &[&str] = &[
    "-std=c99",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pedantic",
    "-Wstrict-prototypes",
];
/// C++ compiler flags of the header checks.
pub const CXX_FLAGS: &[&str] = &[
    "-x",
    "c++",
    "-std=c++11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pedantic",
];

/// Language of a compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// `cc` with [`C_FLAGS`].
    C,
    /// `c++` with [`CXX_FLAGS`].
    Cxx,
}

/// How a program links libsmem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Against `libsmem.so` (rpath set to its directory).
    Shared,
    /// Against `libsmem.a` plus [`STATIC_LIBS`].
    Static,
}

/// Compiles and links `sources` (in `capi/tests/c`) into `out`.
pub fn build_c(sources: &[&str], out: &Path, lang: Lang, link: Link, libs: &Path) {
    build_c_with(sources, out, lang, link, libs, &[]);
}

/// [`build_c`] with extra compiler flags (e.g. sanitizers).
pub fn build_c_with(
    sources: &[&str],
    out: &Path,
    lang: Lang,
    link: Link,
    libs: &Path,
    extra: &[&str],
) {
    let (compiler, flags) = match lang {
        Lang::C => ("cc", C_FLAGS),
        Lang::Cxx => ("c++", CXX_FLAGS),
    };
    let mut cmd = Command::new(compiler);
    cmd.args(flags)
        .args(extra)
        .arg("-I")
        .arg(include_dir())
        .arg("-o")
        .arg(out);
    for s in sources {
        cmd.arg(c_dir().join(s));
    }
    if lang == Lang::Cxx {
        // Stop treating the following inputs (libraries) as C++ sources.
        cmd.args(["-x", "none"]);
    }
    match link {
        Link::Shared => {
            cmd.arg(format!("-L{}", libs.display()))
                .arg("-Wl,--disable-new-dtags")
                .arg(format!("-Wl,-rpath,{}", libs.display()))
                .arg("-lsmem");
        }
        Link::Static => {
            cmd.arg(libs.join("libsmem.a")).args(STATIC_LIBS);
        }
    }
    run_ok(&mut cmd, Duration::from_secs(120));
}
