//! How the process gives memory back. In the 30-minute soak (BENCHMARKS.md)
//! the live heap stayed near 11 MiB (27 MiB at its peak, measured with
//! heaptrack) while RSS climbed past 70 MiB: glibc's malloc keeps freed
//! memory in up to 8 arenas per core (the blocking threads that hash and
//! write blobs each pick one) and returns little of it. So: fewer arenas,
//! and a periodic `malloc_trim`, which hands free pages of every arena back.
//! (mimalloc, tried instead, held 250-380 MiB in the same soak.)
//!
//! Two arenas in all made the runtime's worker threads wait on each other's
//! arena locks (futex waits among the top kernel costs under page load, about
//! 9% of warm-page throughput); two per core gave it back with the soak's RSS
//! still flat (BENCHMARKS.md, "Performance kept").

use std::time::Duration;

/// Arenas glibc may create per core; more threads share them.
const ARENAS_PER_CORE: usize = 2;
/// How often free memory is handed back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Caps glibc's malloc arenas, unless the operator set glibc's own
/// `MALLOC_ARENA_MAX` (which glibc then applies, and the benchmark harness
/// uses to compare caps on one build). Call first thing in `main`, before
/// any thread starts (arenas are created on a thread's first allocation).
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = i32::try_from(cores.saturating_mul(ARENAS_PER_CORE)).unwrap_or(i32::MAX);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning parameter of glibc's allocator;
    // it is called before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// Starts a thread that returns free heap pages to the system every
/// `TRIM_EVERY`.
pub fn trim_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim only releases free memory inside
                // glibc's own arenas; it is thread-safe.
                #[allow(unsafe_code)]
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        if let Err(e) = started {
            tracing::warn!("cannot start the memory trimmer: {e}");
        }
    }
}
