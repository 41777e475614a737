//! A low-overhead fork-join pool for a few cores.
//!
//! A decode step has ~100 parallel regions of tens of microseconds each, so
//! waking threads through the OS each time would cost more than the work.
//! Workers spin on a generation counter for a while, then park; the caller
//! runs share 0 itself and spins until the others are done.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    generation: AtomicUsize,
    done: AtomicUsize,
    job: UnsafeCell<Option<Job>>,
    parked: Vec<AtomicBool>,
    shutdown: AtomicBool,
    panicked: AtomicBool,
}

// SAFETY: `job` is written only by the caller of `run` while no worker reads it
// (between generations) and read by workers only during a generation.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
    /// Serialises concurrent callers of `run`.
    lock: Mutex<()>,
}

/// Spin iterations before a worker parks (~a millisecond).
const SPIN_LIMIT: u32 = 20_000;

impl Pool {
    /// A pool of `threads` (>= 1) including the calling thread.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            parked: (0..threads).map(|_| AtomicBool::new(false)).collect(),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|tid| {
                let s = shared.clone();
                thread::Builder::new()
                    .name(format!("specdec-worker-{tid}"))
                    .spawn(move || worker(s, tid))
                    .expect("spawning a worker thread")
            })
            .collect();
        Pool { shared, workers, threads, lock: Mutex::new(()) }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(t)` for t in 0..threads, in parallel, and returns when all are done.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the job pointer outlives this call: we wait for all workers below.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        unsafe { *s.job.get() = Some(job) };
        s.done.store(0, Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        for (tid, p) in s.parked.iter().enumerate().skip(1) {
            if p.load(Ordering::SeqCst) {
                self.workers[tid - 1].thread().unpark();
            }
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        while s.done.load(Ordering::Acquire) < self.threads - 1 {
            std::hint::spin_loop();
        }
        unsafe { *s.job.get() = None };
        if let Err(e) = mine {
            std::panic::resume_unwind(e);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a worker thread panicked");
        }
    }
}

/// Rows from which `Pool::row_blocks` splits its work over the threads.
pub const PAR_ROWS: usize = 4;

/// An output pointer shared by the threads of one `Pool::run`, each of which
/// writes its own disjoint part of what it points to.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: users write disjoint parts only, and the pointee outlives the `run`.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// Through a method, so closures capture the Sync wrapper, not the pointer.
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

impl Pool {
    /// Calls `f(first_row, block)` on one contiguous block of `data`'s rows
    /// (`width` floats each) per thread, or on all of them on the caller
    /// below `PAR_ROWS` rows (waking the threads would cost more than the
    /// work). For per-row work, whose results cannot depend on the split.
    pub fn row_blocks(&self, data: &mut [f32], width: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        let m = data.len() / width.max(1);
        let nt = self.threads;
        if m < PAR_ROWS || nt == 1 {
            f(0, data);
            return;
        }
        let p = SendPtr(data.as_mut_ptr());
        self.run(&|t| {
            let (r0, r1) = (m * t / nt, m * (t + 1) / nt);
            if r0 < r1 {
                // SAFETY: rows r0..r1 lie inside `data` and no other thread's block overlaps them.
                let block = unsafe { std::slice::from_raw_parts_mut(p.get().add(r0 * width), (r1 - r0) * width) };
                f(r0, block);
            }
        });
    }
}

fn worker(s: Arc<Shared>, tid: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if s.shutdown.load(Ordering::Relaxed) {
                return;
            }
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
            } else {
                s.parked[tid].store(true, Ordering::SeqCst);
                if s.generation.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst) {
                    thread::park();
                }
                s.parked[tid].store(false, Ordering::SeqCst);
            }
        }
        if s.shutdown.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: set before the generation bump we observed; valid until `done`.
        let job = unsafe { (*s.job.get()).expect("job set for this generation") };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*job)(tid) }));
        if r.is_err() {
            s.panicked.store(true, Ordering::SeqCst);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_runs_once_per_call() {
        let pool = Pool::new(3);
        let counts: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            pool.run(&|t| {
                counts[t].fetch_add(1, Ordering::SeqCst);
            });
        }
        for c in &counts {
            assert_eq!(c.load(Ordering::SeqCst), 1000);
        }
        // After parking, a call still wakes the workers.
        std::thread::sleep(std::time::Duration::from_millis(50));
        pool.run(&|t| {
            counts[t].fetch_add(1, Ordering::SeqCst);
        });
        assert!(counts.iter().all(|c| c.load(Ordering::SeqCst) == 1001));
    }

    #[test]
    fn row_blocks_visit_every_row_once_with_its_index() {
        let pool = Pool::new(3);
        for m in [1usize, 5, PAR_ROWS - 1, PAR_ROWS, 100] {
            let width = 3;
            let mut data = vec![0f32; m * width];
            pool.row_blocks(&mut data, width, &|r0, b| {
                for (i, row) in (r0..).zip(b.chunks_exact_mut(width)) {
                    row.iter_mut().for_each(|v| *v += i as f32 + 1.0);
                }
            });
            let want: Vec<f32> = (0..m).flat_map(|i| [i as f32 + 1.0; 3]).collect();
            assert_eq!(data, want, "{m} rows");
        }
    }

    #[test]
    fn worker_panic_is_reported_not_hung() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|t| {
                if t == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        pool.run(&|_| {}); // still usable
    }
}
