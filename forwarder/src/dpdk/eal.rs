//! The Environment Abstraction Layer: initialised once per process, and the lcores
//! (EAL threads pinned to cores) it runs functions on.

use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use super::error::errno;
use super::DpdkError;

/// `rte_eal_init` has been called in this process (whatever its outcome).
static STARTED: AtomicBool = AtomicBool::new(false);
/// The EAL is up: DPDK objects may be created.
static READY: AtomicBool = AtomicBool::new(false);
/// The EAL shared by everyone who calls [`Eal::get_or_init`] (tests).
static SHARED: OnceLock<Eal> = OnceLock::new();
/// Why the shared initialisation failed, repeated to every later caller.
static SHARED_FAILED: Mutex<Option<DpdkError>> = Mutex::new(None);
/// Serialises launches and waits: DPDK expects them from one (the main) thread.
static LAUNCH: Mutex<()> = Mutex::new(());

/// What the trampoline returns when the launched function panicked.
const PANICKED: c_int = -1;

/// Proof that the EAL is initialised; the lcore and shutdown calls hang off it.
///
/// DPDK allows one initialisation per process: [`Eal::init`] for a binary that owns
/// it, [`Eal::get_or_init`] for tests that share it.
#[derive(Debug)]
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Initialises the EAL with `args`, DPDK command-line arguments without the
    /// program name (e.g. `["-l", "0-3", "--vdev", "net_ring0"]`).
    ///
    /// The calling thread becomes the main lcore. Fails with
    /// [`DpdkError::AlreadyInitialised`] on any call after the first.
    pub fn init(args: &[String]) -> Result<Eal, DpdkError> {
        let mut argv = Vec::with_capacity(args.len() + 2);
        argv.push(CString::from(c"tarp"));
        for arg in args {
            let arg = CString::new(arg.as_str()).map_err(|_| {
                DpdkError::InvalidArgument(format!("EAL argument {arg:?} contains a NUL byte"))
            })?;
            argv.push(arg);
        }
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::AlreadyInitialised);
        }
        // The EAL permutes argv and may keep pointers into it, so it lives for the
        // rest of the process; this happens once.
        let argv: &'static mut [*mut c_char] = argv
            .into_iter()
            .map(CString::into_raw)
            .collect::<Vec<_>>()
            .leak();
        let argc = c_int::try_from(argv.len())
            .map_err(|_| DpdkError::InvalidArgument("too many EAL arguments".into()))?;
        // SAFETY: argv holds argc valid NUL-terminated strings that are never freed;
        // STARTED guarantees this is the process's only call.
        let ret = unsafe { dpdk_sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            return Err(DpdkError::from_rte_errno("rte_eal_init"));
        }
        READY.store(true, Ordering::SeqCst);
        Ok(Eal { _private: () })
    }

    /// The process's EAL, initialised with `args` by the first caller; later callers'
    /// `args` are ignored. For test binaries, whose tests share one process.
    pub fn get_or_init(args: &[String]) -> Result<&'static Eal, DpdkError> {
        if let Some(eal) = SHARED.get() {
            return Ok(eal);
        }
        let mut failed = SHARED_FAILED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(eal) = SHARED.get() {
            return Ok(eal);
        }
        if let Some(err) = failed.as_ref() {
            return Err(err.clone());
        }
        match Eal::init(args) {
            Ok(eal) => Ok(SHARED.get_or_init(|| eal)),
            Err(err) => {
                *failed = Some(err.clone());
                Err(err)
            }
        }
    }

    /// The lcore that called [`Eal::init`].
    pub fn main_lcore(&self) -> u32 {
        // SAFETY: plain read of EAL configuration, valid once the EAL is up.
        unsafe { dpdk_sys::rte_get_main_lcore() }
    }

    /// The enabled lcores other than the main one, in increasing order.
    pub fn worker_lcores(&self) -> Vec<u32> {
        let mut lcores = Vec::new();
        // The RTE_LCORE_FOREACH_WORKER loop: start "before 0", stop past RTE_MAX_LCORE.
        // SAFETY (both calls): rte_get_next_lcore only reads the lcore table.
        let mut lcore = unsafe { dpdk_sys::rte_get_next_lcore(u32::MAX, 1, 0) };
        while lcore < dpdk_sys::RTE_MAX_LCORE {
            lcores.push(lcore);
            lcore = unsafe { dpdk_sys::rte_get_next_lcore(lcore, 1, 0) };
        }
        lcores
    }

    /// The NUMA socket of `lcore`, or `None` if there is no such lcore.
    pub fn lcore_socket(&self, lcore: u32) -> Option<u32> {
        if lcore >= dpdk_sys::RTE_MAX_LCORE {
            return None;
        }
        // SAFETY: lcore is below RTE_MAX_LCORE, as rte_lcore_to_socket_id requires.
        Some(unsafe { dpdk_sys::rte_lcore_to_socket_id(lcore) })
    }

    /// The NUMA sockets the EAL found, for one mempool each.
    pub fn sockets(&self) -> Vec<u32> {
        // SAFETY (both calls): plain reads of the EAL's topology.
        let count = unsafe { dpdk_sys::rte_socket_count() };
        (0..count)
            .filter_map(|idx| u32::try_from(unsafe { dpdk_sys::rte_socket_id_by_idx(idx) }).ok())
            .collect()
    }

    /// Runs `f` on worker `lcore`, like `std::thread::spawn` on an EAL thread.
    ///
    /// Fails if `lcore` is not a worker lcore or is still running an earlier function.
    /// A panic in `f` is caught and reported by [`Eal::wait_lcore`].
    pub fn launch_on_lcore<F>(&self, lcore: u32, f: F) -> Result<(), DpdkError>
    where
        F: FnOnce() + Send + 'static,
    {
        if !self.worker_lcores().contains(&lcore) {
            return Err(DpdkError::InvalidArgument(format!(
                "lcore {lcore} is not a worker lcore"
            )));
        }
        let job: Box<Job> = Box::new(Box::new(f));
        let arg = Box::into_raw(job).cast::<c_void>();
        let _launch = LAUNCH.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: trampoline matches lcore_function_t and takes ownership of arg, a
        // leaked Box<Job>; lcore is a worker lcore.
        let ret = unsafe { dpdk_sys::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
        if ret == -errno::EBUSY {
            // SAFETY: the lcore was busy, so DPDK never handed arg to the trampoline;
            // it is still ours to free.
            drop(unsafe { Box::from_raw(arg.cast::<Job>()) });
        }
        // On any other failure (-EPIPE) the worker may or may not have started the
        // job: leak it rather than risk freeing it twice.
        if ret < 0 {
            return Err(DpdkError::from_ret("rte_eal_remote_launch", ret));
        }
        Ok(())
    }

    /// Waits until `lcore` has finished the function last launched on it.
    pub fn wait_lcore(&self, lcore: u32) -> Result<(), DpdkError> {
        if !self.worker_lcores().contains(&lcore) {
            return Err(DpdkError::InvalidArgument(format!(
                "lcore {lcore} is not a worker lcore"
            )));
        }
        let _launch = LAUNCH.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: lcore is a worker lcore; the call only polls its state.
        match unsafe { dpdk_sys::rte_eal_wait_lcore(lcore) } {
            PANICKED => Err(DpdkError::LcorePanicked { lcore }),
            _ => Ok(()),
        }
    }

    /// Waits for every worker lcore (`rte_eal_mp_wait_lcore`); reports the first
    /// that panicked.
    pub fn wait_all(&self) -> Result<(), DpdkError> {
        {
            let _launch = LAUNCH.lock().unwrap_or_else(PoisonError::into_inner);
            // SAFETY: waits on every worker's state; no arguments.
            unsafe { dpdk_sys::rte_eal_mp_wait_lcore() };
        }
        self.worker_lcores()
            .into_iter()
            .try_for_each(|lcore| self.wait_lcore(lcore))
    }

    /// Waits for every worker lcore, releases the EAL (`rte_eal_cleanup`) and exits
    /// the process with `code`.
    ///
    /// Exiting is what makes this safe: after `rte_eal_cleanup` DPDK's memory is gone,
    /// so no mbuf, mempool or port may be touched again, and no Rust code of this
    /// process runs again. Stop registered non-EAL threads before calling it.
    pub fn shutdown(self, code: i32) -> ! {
        {
            let _launch = LAUNCH.lock().unwrap_or_else(PoisonError::into_inner);
            // SAFETY: waits on every worker's state; no arguments.
            unsafe { dpdk_sys::rte_eal_mp_wait_lcore() };
        }
        READY.store(false, Ordering::SeqCst);
        // SAFETY: no worker lcore runs any more, and the process exits right after,
        // before any DPDK object is used again.
        unsafe { dpdk_sys::rte_eal_cleanup() };
        process::exit(code)
    }
}

/// A function launched on an lcore.
type Job = Box<dyn FnOnce() + Send>;

/// Runs on the worker lcore: takes the job back from its raw pointer and runs it.
unsafe extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the Box<Job> that launch_on_lcore leaked for exactly this call.
    let job = unsafe { Box::from_raw(arg.cast::<Job>()) };
    match catch_unwind(AssertUnwindSafe(job)) {
        Ok(()) => 0,
        Err(_) => PANICKED,
    }
}

/// Fails unless the EAL is up: DPDK objects cannot be created before.
pub(crate) fn ensure_ready() -> Result<(), DpdkError> {
    if READY.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(DpdkError::NotInitialised)
    }
}

/// The calling thread's lcore id, or `None` for a thread DPDK does not know.
#[inline]
pub fn current_lcore() -> Option<u32> {
    // SAFETY: reads the calling thread's lcore id (a thread-local).
    let lcore = unsafe { dpdk_sys::rte_lcore_id() };
    (lcore != dpdk_sys::LCORE_ID_ANY).then_some(lcore)
}

/// Registers the calling non-EAL thread (e.g. the keeper's) with DPDK, giving it an
/// lcore id and so a mempool cache; returns the id.
pub fn register_thread() -> Result<u32, DpdkError> {
    ensure_ready()?;
    // SAFETY: the EAL is up; registers only the calling thread.
    if unsafe { dpdk_sys::rte_thread_register() } < 0 {
        return Err(DpdkError::from_rte_errno("rte_thread_register"));
    }
    current_lcore().ok_or(DpdkError::NotInitialised)
}

/// Releases the lcore id [`register_thread`] gave the calling thread; a no-op for
/// threads that did not register.
pub fn unregister_thread() {
    if ensure_ready().is_ok() {
        // SAFETY: the EAL is up; releases only a non-EAL lcore of the calling thread.
        unsafe { dpdk_sys::rte_thread_unregister() };
    }
}
