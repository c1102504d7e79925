//! The headers from C's point of view: `tests/c/api_smoke.c` includes all three headers and is
//! compiled as C99 (`-Wall -Wextra -Werror -pedantic`) and as C++11, linked against
//! `libsmem.so` and against `libsmem.a`, and run. It prints the C layout of the config structs,
//! which must match the `#[repr(C)]` mirrors of this crate.

mod common;

use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::process::Command;
use std::time::Duration;

use common::{Lang, Link};
use smem::{smem_batch_copy_params, smem_bm_config_t, smem_shm_config_t, smem_tls_option};

/// The layout lines the C program must print, computed from the Rust mirrors.
fn rust_layout() -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    macro_rules! off {
        ($t:ident, $($f:ident),*) => {
            m.insert(format!("{}.size", stringify!($t)), size_of::<$t>());
            $( m.insert(format!("{}.{}", stringify!($t), stringify!($f)), offset_of!($t, $f)); )*
        };
    }
    off!(
        smem_bm_config_t,
        initTimeout,
        createTimeout,
        controlOperationTimeout,
        startConfigStore,
        startConfigStoreOnly,
        dynamicWorldSize,
        unifiedAddressSpace,
        autoRanking,
        rankId,
        flags
    );
    off!(
        smem_shm_config_t,
        shmInitTimeout,
        shmCreateTimeout,
        controlOperationTimeout,
        startConfigStore,
        flags
    );
    off!(
        smem_tls_option,
        enableTls,
        caFile,
        crlFile,
        certFile,
        keyFile,
        keyPassword
    );
    off!(
        smem_batch_copy_params,
        sources,
        destinations,
        dataSizes,
        batchSize
    );
    // C bool is mirrored as u8; the enums travel as u32 parameters.
    m.insert("bool.size".into(), size_of::<u8>());
    m.insert("smem_bm_copy_type.size".into(), size_of::<u32>());
    m.insert("smem_bm_data_op_type.size".into(), size_of::<u32>());
    m.insert("smem_shm_data_op_type.size".into(), size_of::<u32>());
    m
}

fn c_layout(stdout: &str) -> BTreeMap<String, usize> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("layout "))
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("layout line");
            (k.to_owned(), v.parse().expect("layout value"))
        })
        .collect()
}

#[test]
#[cfg_attr(miri, ignore)]
fn c_and_cxx_programs_compile_link_and_run() {
    assert_eq!(align_of::<smem_tls_option>(), 8);
    let libs = common::lib_dir();
    let dir = common::scratch("c-headers");
    let expected = rust_layout();
    for lang in [Lang::C, Lang::Cxx] {
        for link in [Link::Shared, Link::Static] {
            let exe = dir.join(format!("api_smoke_{lang:?}_{link:?}"));
            common::build_c(&["api_smoke.c"], &exe, lang, link, &libs);
            let out = common::run_ok(
                Command::new(&exe).env_remove("SMEM_LOG_LEVEL"),
                Duration::from_secs(60),
            );
            assert!(
                out.stdout.lines().any(|l| l == "ok"),
                "{lang:?}/{link:?}: {}",
                out.stdout
            );
            assert_eq!(
                c_layout(&out.stdout),
                expected,
                "{lang:?}/{link:?} layout differs"
            );
            // The initial level comes from SMEM_LOG_LEVEL.
            let out = common::run_ok(
                Command::new(&exe)
                    .arg("quiet")
                    .env("SMEM_LOG_LEVEL", "error"),
                Duration::from_secs(60),
            );
            assert!(
                out.stdout.lines().any(|l| l == "ok"),
                "{lang:?}/{link:?} quiet"
            );
            let out = common::run_ok(
                Command::new(&exe).arg("quiet").env("SMEM_LOG_LEVEL", "3"),
                Duration::from_secs(60),
            );
            assert!(
                out.stdout.lines().any(|l| l == "ok"),
                "{lang:?}/{link:?} quiet 3"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The smoke program under AddressSanitizer + UndefinedBehaviorSanitizer (C side; the library
/// itself is not instrumented), and the headers once more as C11.
#[test]
#[cfg_attr(miri, ignore)]
fn smoke_under_asan_ubsan_and_c11() {
    let libs = common::lib_dir();
    let dir = common::scratch("c-asan");
    let exe = dir.join("api_smoke_asan");
    let san = [
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
    ];
    common::build_c_with(&["api_smoke.c"], &exe, Lang::C, Link::Shared, &libs, &san);
    let out = common::run_ok(
        Command::new(&exe).env_remove("SMEM_LOG_LEVEL").env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=86",
        ),
        Duration::from_secs(120),
    );
    assert!(out.stdout.lines().any(|l| l == "ok"), "{}", out.stdout);
    let c11 = dir.join("api_smoke_c11");
    common::build_c_with(
        &["api_smoke.c"],
        &c11,
        Lang::C,
        Link::Shared,
        &libs,
        &["-std=c11"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(miri, ignore)]
fn default_log_sink_writes_timestamped_lines_to_stderr() {
    let libs = common::lib_dir();
    let dir = common::scratch("c-stderr");
    let exe = dir.join("api_smoke");
    common::build_c(&["api_smoke.c"], &exe, Lang::C, Link::Shared, &libs);
    let out = common::run_ok(
        Command::new(&exe).env("SMEM_LOG_LEVEL", "warn"),
        Duration::from_secs(60),
    );
    // smem_init(4) fails after the external logger was removed: stderr gets the record.
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("smem_init failed") && l.contains("flags"))
        .unwrap_or_else(|| panic!("no smem_init record on stderr:\n{}", out.stderr));
    // 2026-11-25T09:20:23.123Z WARN  [main/1] smem::capi: smem_init failed: ...
    let (ts, rest) = line.split_once(' ').expect("timestamp");
    assert_eq!(ts.len(), 24, "{line}");
    assert!(
        ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.',
        "{line}"
    );
    assert!(rest.starts_with("WARN "), "{line}");
    assert!(rest.contains("smem::capi: "), "{line}");
    assert!(rest.contains(" ["), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(miri, ignore)]
fn pkg_config_file_builds_a_program() {
    let libs = common::lib_dir();
    let prefix = common::scratch("pc-prefix");
    let (lib, inc) = (prefix.join("lib"), prefix.join("include"));
    std::fs::create_dir_all(lib.join("pkgconfig")).unwrap();
    std::fs::create_dir_all(&inc).unwrap();
    for f in ["libsmem.so", "libsmem.a"] {
        std::fs::copy(libs.join(f), lib.join(f)).unwrap();
    }
    for h in ["smem.h", "smem_bm.h", "smem_shm.h"] {
        std::fs::copy(common::include_dir().join(h), inc.join(h)).unwrap();
    }
    common::run_ok(
        Command::new("bash")
            .arg(common::capi_dir().join("gen-pc.sh"))
            .arg(&prefix)
            .arg(lib.join("pkgconfig")),
        Duration::from_secs(30),
    );
    let pc_dir = lib.join("pkgconfig");
    let have_pkg_config = Command::new("pkg-config").arg("--version").output().is_ok();
    let pc = if have_pkg_config {
        common::run_ok(
            Command::new("pkg-config")
                .args(["--cflags", "--libs", "smem"])
                .env("PKG_CONFIG_PATH", &pc_dir),
            Duration::from_secs(30),
        )
        .stdout
    } else {
        // No pkg-config on this machine: evaluate the file the way it would.
        eval_pc(&std::fs::read_to_string(pc_dir.join("smem.pc")).unwrap())
    };
    let flags: Vec<&str> = pc.split_whitespace().collect();
    assert!(flags.contains(&"-lsmem"), "{flags:?}");
    let exe = prefix.join("api_smoke");
    let mut cc = Command::new("cc");
    cc.args(common::C_FLAGS)
        .arg(common::c_dir().join("api_smoke.c"))
        .arg("-o")
        .arg(&exe)
        .args(&flags);
    common::run_ok(&mut cc, Duration::from_secs(120));
    let out = common::run_ok(
        Command::new(&exe)
            .env("LD_LIBRARY_PATH", &lib)
            .env_remove("SMEM_LOG_LEVEL"),
        Duration::from_secs(60),
    );
    assert!(out.stdout.lines().any(|l| l == "ok"), "{}", out.stdout);
    let _ = std::fs::remove_dir_all(&prefix);
}

/// `Cflags` and `Libs` of a `.pc` file with its `${var}` references expanded.
fn eval_pc(text: &str) -> String {
    let mut vars: Vec<(String, String)> = Vec::new();
    let expand = |v: &str, vars: &[(String, String)]| {
        let mut v = v.to_owned();
        for (k, val) in vars.iter().rev() {
            v = v.replace(&format!("${{{k}}}"), val);
        }
        v
    };
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some((k, v)) = line.split_once('=').filter(|(k, _)| !k.contains(':')) {
            let v = expand(v.trim(), &vars);
            vars.push((k.trim().to_owned(), v));
        } else if let Some(v) = line
            .strip_prefix("Cflags:")
            .or_else(|| line.strip_prefix("Libs:"))
        {
            out.push(expand(v.trim(), &vars));
        }
    }
    out.join(" ")
}

#[test]
fn eval_pc_expands_variables() {
    let pc =
        "prefix=/p\nlibdir=${prefix}/lib\nLibs: -L${libdir} -lsmem\nCflags: -I${prefix}/include\n";
    assert_eq!(eval_pc(pc), "-L/p/lib -lsmem -I/p/include");
}
