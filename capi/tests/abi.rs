//! Header/ABI drift check: every function declared in `capi/include/*.h` is exported by
//! `libsmem.so`, and every `smem_*` function that `libsmem.so` exports is declared.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

/// `text` without C comments (`/* */` and `//`); string literals are not expected in headers.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        match (block, line) {
            (Some(b), l) if l.is_none_or(|l| b < l) => {
                out.push_str(&rest[..b]);
                let end = rest[b + 2..].find("*/").expect("unterminated comment");
                rest = &rest[b + 2 + end + 2..];
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |n| &rest[l + n..]);
            }
            (None, None) => {
                out.push_str(rest);
                return out;
            }
            (Some(_), None) => unreachable!(),
        }
    }
}

/// Names `smem_*` directly followed by `(`: the declared functions (after comment removal,
/// nothing else in our headers has that shape; macros do not start with `smem_`).
fn declared_functions() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for h in ["smem.h", "smem_bm.h", "smem_shm.h", "smem_trans.h"] {
        let text = std::fs::read_to_string(common::include_dir().join(h)).expect("header");
        let code = strip_comments(&text);
        let bytes = code.as_bytes();
        let mut i = 0;
        while let Some(pos) = code[i..].find("smem_") {
            let start = i + pos;
            let boundary = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            let after = code[end..].trim_start();
            if boundary && after.starts_with('(') {
                names.insert(code[start..end].to_owned());
            }
            i = end;
        }
    }
    names
}

/// Every defined dynamic symbol of `libsmem.so`, with its `nm` kind letter.
fn dynamic_symbols() -> Vec<(String, String)> {
    let so = common::lib_dir().join("libsmem.so");
    let out = common::run_ok(
        Command::new("nm").args(["-D", "--defined-only"]).arg(&so),
        Duration::from_secs(60),
    );
    out.stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            Some((kind.to_owned(), name.to_owned()))
        })
        .collect()
}

fn exported_functions() -> BTreeSet<String> {
    dynamic_symbols()
        .into_iter()
        .filter(|(kind, name)| kind == "T" && name.starts_with("smem_"))
        .map(|(_, name)| name)
        .collect()
}

/// The library exports the C API and nothing else (no Rust symbols leak into the ABI).
#[test]
#[cfg_attr(miri, ignore)]
fn only_the_c_api_is_exported() {
    let other: Vec<_> = dynamic_symbols()
        .into_iter()
        .filter(|(_, name)| !name.starts_with("smem_"))
        .collect();
    assert!(other.is_empty(), "unexpected exports: {other:?}");
}

/// SPEC 2.1-2.3, plus `smem_shm_get_extra_context` (SPEC 2.3 asks for it).
const SPEC_FUNCTIONS: [&str; 32] = [
    "smem_init",
    "smem_set_extern_logger",
    "smem_set_log_level",
    "smem_uninit",
    "smem_get_last_err_msg",
    "smem_get_and_clear_last_err_msg",
    "smem_set_ssl_option",
    "smem_bm_config_init",
    "smem_bm_init",
    "smem_bm_uninit",
    "smem_bm_get_rank_id",
    "smem_bm_create",
    "smem_bm_destroy",
    "smem_bm_join",
    "smem_bm_leave",
    "smem_bm_get_local_mem_size",
    "smem_bm_ptr",
    "smem_bm_copy",
    "smem_bm_copy_2d",
    "smem_shm_config_init",
    "smem_shm_init",
    "smem_shm_uninit",
    "smem_shm_query_support_data_operation",
    "smem_shm_create",
    "smem_shm_destroy",
    "smem_shm_set_extra_context",
    "smem_shm_get_extra_context",
    "smem_shm_get_global_rank",
    "smem_shm_get_global_rank_size",
    "smem_shm_control_barrier",
    "smem_shm_control_allgather",
    "smem_shm_topology_can_reach",
];

/// SPEC 6.2 (`smem_trans.h`).
const SPEC_TRANS_FUNCTIONS: [&str; 19] = [
    "smem_trans_config_init",
    "smem_trans_init",
    "smem_trans_uninit",
    "smem_trans_create",
    "smem_trans_destroy",
    "smem_trans_malloc",
    "smem_trans_free",
    "smem_trans_register_mem",
    "smem_trans_batch_register_mem",
    "smem_trans_deregister_mem",
    "smem_trans_write",
    "smem_trans_batch_write",
    "smem_trans_read",
    "smem_trans_batch_read",
    "smem_trans_write_submit",
    "smem_trans_read_submit",
    "smem_trans_batch_write_submit",
    "smem_trans_batch_read_submit",
    "smem_trans_wait",
];

/// SPEC 6.1 (`smem_bm.h`): batch and asynchronous copies, registered memory, GVA lookup.
const SPEC_6_1_FUNCTIONS: [&str; 5] = [
    "smem_bm_copy_batch",
    "smem_bm_wait",
    "smem_bm_register_user_mem",
    "smem_bm_unregister_user_mem",
    "smem_bm_get_rank_id_by_gva",
];

#[test]
#[cfg_attr(miri, ignore)]
fn headers_and_exports_agree() {
    let declared = declared_functions();
    let exported = exported_functions();
    let spec: BTreeSet<String> = SPEC_FUNCTIONS
        .iter()
        .chain(SPEC_TRANS_FUNCTIONS.iter())
        .chain(SPEC_6_1_FUNCTIONS.iter())
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        declared, spec,
        "the headers do not declare exactly the SPEC's functions"
    );
    let missing: Vec<_> = declared.difference(&exported).collect();
    let undeclared: Vec<_> = exported.difference(&declared).collect();
    assert!(
        missing.is_empty(),
        "declared in the headers but not exported: {missing:?}"
    );
    assert!(
        undeclared.is_empty(),
        "exported but not declared in a header: {undeclared:?}"
    );
}

#[test]
fn comment_stripping() {
    assert_eq!(
        strip_comments("a /* smem_x( */ b // smem_y(\nc"),
        "a  b \nc"
    );
}

/// The `SM_*` codes of `smem.h` are exactly `smem_core::ErrorCode::ALL` (plus `SM_OK`).
#[test]
fn header_error_codes_match_the_rust_enum() {
    let text = std::fs::read_to_string(common::include_dir().join("smem.h")).expect("smem.h");
    let code = strip_comments(&text);
    let mut header = BTreeSet::new();
    for line in code.lines() {
        let mut f = line.split_whitespace();
        if f.next() != Some("#define") {
            continue;
        }
        let (Some(name), Some(value)) = (f.next(), f.next()) else {
            continue;
        };
        if !name.starts_with("SM_") {
            continue;
        }
        let value: i32 = value
            .trim_matches(|c| c == '(' || c == ')')
            .parse()
            .expect(name);
        header.insert((name.to_owned(), value));
    }
    let mut rust: BTreeSet<(String, i32)> = smem_core::ErrorCode::ALL
        .iter()
        .map(|c| (c.name().to_owned(), c.code()))
        .collect();
    rust.insert(("SM_OK".to_owned(), 0));
    assert_eq!(header, rust);
}
