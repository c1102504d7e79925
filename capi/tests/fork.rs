//! Fork safety of the logging path (SPEC 4): a child forked while other threads of the parent
//! are logging (to stderr and to an external logger) can still log, swap loggers and call smem.
//! One test in its own binary (fork + process-wide logger).
#![allow(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use smem::*;

static PARENT_CALLS: AtomicUsize = AtomicUsize::new(0);
static CHILD_CALLS: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
/// Phase of the test: false = the parent logs to `parent_log`, true = to stderr.
static TO_STDERR: AtomicBool = AtomicBool::new(false);

unsafe extern "C" fn parent_log(_: c_int, _: *const c_char) {
    PARENT_CALLS.fetch_add(1, Ordering::Relaxed);
}

unsafe extern "C" fn child_log(_: c_int, _: *const c_char) {
    CHILD_CALLS.fetch_add(1, Ordering::Relaxed);
}

/// What a forked child does; returns its exit code (0 = fine).
fn child() -> i32 {
    unsafe {
        libc::alarm(10); // a deadlock here kills the child, and the parent sees SIGALRM
        // Keep the child's stderr records out of the test output.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        libc::dup2(null, 2);
        if smem_set_extern_logger(Some(child_log)) != 0 {
            return 1;
        }
        if smem_init(1) != -2000 || CHILD_CALLS.load(Ordering::Relaxed) != 1 {
            return 2;
        }
        if smem_set_extern_logger(None) != 0 || smem_init(2) != -2000 {
            return 3;
        }
        if smem_set_log_level(0) != 0 || smem_init(0) != 0 {
            return 4;
        }
    }
    0
}

#[test]
#[cfg_attr(miri, ignore)]
fn fork_while_other_threads_log() {
    assert_eq!(unsafe { smem_set_log_level(2) }, 0);
    let workers: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                while !STOP.load(Ordering::Relaxed) {
                    // Worker 0 keeps (re)installing the logger of the phase while forks happen.
                    if i == 0 {
                        let f = if TO_STDERR.load(Ordering::Relaxed) {
                            None
                        } else {
                            Some(parent_log as unsafe extern "C" fn(c_int, *const c_char))
                        };
                        assert_eq!(unsafe { smem_set_extern_logger(f) }, 0);
                    }
                    assert_eq!(unsafe { smem_init(9) }, -2000);
                }
            })
        })
        .collect();
    assert_eq!(unsafe { smem_set_extern_logger(Some(parent_log)) }, 0);
    std::thread::sleep(Duration::from_millis(20));
    let saved_stderr = unsafe { libc::dup(2) };
    for round in 0..40 {
        if round == 20 {
            // Phase 2: the parent's threads log to stderr (sent to /dev/null meanwhile).
            let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY) };
            unsafe { libc::dup2(null, 2) };
            unsafe { libc::close(null) };
            TO_STDERR.store(true, Ordering::Relaxed);
            assert_eq!(unsafe { smem_set_extern_logger(None) }, 0);
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = child();
            unsafe { libc::_exit(code) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut status = 0;
        loop {
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            if Instant::now() > deadline {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                unsafe { libc::waitpid(pid, &mut status, 0) };
                panic!("round {round}: the forked child hung");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "round {round}: child status {status:#x} (signal {})",
            libc::WTERMSIG(status)
        );
    }
    STOP.store(true, Ordering::Relaxed);
    workers.into_iter().for_each(|w| w.join().unwrap());
    unsafe { libc::dup2(saved_stderr, 2) };
    unsafe { libc::close(saved_stderr) };
    assert!(PARENT_CALLS.load(Ordering::Relaxed) > 0);
    assert_eq!(unsafe { smem_set_extern_logger(None) }, 0);
}
