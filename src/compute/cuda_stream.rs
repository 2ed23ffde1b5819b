//! graft's own CUDA work (cuBLAS products, the flash-attention kernels) on a stream of
//! its own, ordered against cubecl's kernels on the device rather than from the host.
//!
//! cubecl does not expose the CUDA stream its kernels run on. So `cuCtxRecordEvent`
//! captures everything queued in the context (the inputs' kernels among it), the side
//! stream waits for that, and after the work `cuCtxWaitEvent` makes all work queued
//! later wait for it. The work is handed to cubecl's device thread like a kernel
//! launch, so nothing on the host waits either: the training thread keeps running
//! ahead of the GPU as it does with burn's own kernels. Drivers older than CUDA 12.5
//! lack the two context calls; there the work is fenced from the host instead.

use std::cell::RefCell;

use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl_common::device::Device;
use cubecl_common::device_handle::DeviceHandle;
use cubecl_common::stream_id::StreamId;
use cubecl_runtime::runtime::Runtime;
use cubecl_runtime::server::ComputeServer;
use cudarc::driver::result as driver;
use cudarc::driver::sys as csys;

/// cubecl's server for one CUDA device, the state its device thread owns.
pub type CudaServer = <CudaRuntime as Runtime>::Server;

/// The side stream of the current thread (cubecl's device thread), in the device's
/// primary context: the one cubecl's kernels run in.
pub struct SideStream {
    pub context: csys::CUcontext,
    pub stream: csys::CUstream,
    inputs_ready: csys::CUevent,
    work_done: csys::CUevent,
}

thread_local! {
    static SIDE: RefCell<Option<SideStream>> = const { RefCell::new(None) };
}

/// Queues `work` on cubecl's device thread for `device`, after everything submitted
/// before it. A panic there is kept and reported by the next [`check_earlier_failure`]
/// on the training thread: cubecl's device thread would otherwise swallow it and
/// leave the outputs unwritten while training goes on.
pub fn submit(device: &CudaDevice, work: impl FnOnce(&mut CudaServer, StreamId) + Send + 'static) {
    let stream_id = StreamId::current();
    DeviceHandle::<CudaServer>::new(device.to_id()).submit(move |server: &mut CudaServer| {
        let run = std::panic::AssertUnwindSafe(|| work(server, stream_id));
        if let Err(panic) = std::panic::catch_unwind(run) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            FAILURE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(message);
        }
    });
}

/// The first failure of graft's work on cubecl's device thread, if any.
static FAILURE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Panics with the first earlier failure on the device thread, if there was one.
pub fn check_earlier_failure() {
    if let Some(message) = FAILURE.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        panic!("graft's CUDA work failed on the GPU: {message}");
    }
}

/// Runs `work` (which queues work on the side stream it is given) ordered after
/// everything cubecl queued before it, and before everything cubecl queues after.
/// Call on cubecl's device thread, with the server that owns the buffers `work` uses.
pub fn run_ordered<R>(
    server: &mut CudaServer,
    stream_id: StreamId,
    device_index: usize,
    work: impl FnOnce(&SideStream) -> R,
) -> R {
    SIDE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let side = cell.get_or_insert_with(|| SideStream::create(device_index));
        let mut ordering = ordering();
        // SAFETY: the context and events belong to this thread's side stream, created
        // in the primary context that cubecl's kernels run in.
        unsafe {
            driver::ctx::set_current(side.context).expect("CUDA context");
            if ordering == Ordering::Device {
                let recorded = csys::cuCtxRecordEvent(side.context, side.inputs_ready);
                if recorded == csys::CUresult::CUDA_SUCCESS {
                    driver::stream::wait_event(
                        side.stream,
                        side.inputs_ready,
                        csys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                    )
                    .expect("cuStreamWaitEvent");
                } else {
                    ordering = fall_back_to_host(recorded);
                }
            }
            if ordering == Ordering::Host {
                burn_cubecl::cubecl::future::block_on(server.sync(stream_id))
                    .expect("CUDA stream failed");
            }
        }
        let result = work(side);
        // SAFETY: as above.
        unsafe {
            if ordering == Ordering::Device {
                driver::event::record(side.work_done, side.stream).expect("cuEventRecord");
                let waiting = csys::cuCtxWaitEvent(side.context, side.work_done);
                if waiting != csys::CUresult::CUDA_SUCCESS {
                    ordering = fall_back_to_host(waiting);
                }
            }
            if ordering == Ordering::Host {
                driver::stream::synchronize(side.stream).expect("CUDA side stream failed");
            }
        }
        result
    })
}

impl SideStream {
    fn create(index: usize) -> SideStream {
        // SAFETY: the primary context is the one cubecl's kernels run in; it is made
        // current before the stream and events are created, so all belong to it.
        unsafe {
            let context = primary_context(index);
            let stream = driver::stream::create(driver::stream::StreamKind::NonBlocking)
                .expect("CUDA stream");
            let event = || {
                driver::event::create(csys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                    .expect("CUDA event")
            };
            SideStream {
                context,
                stream,
                inputs_ready: event(),
                work_done: event(),
            }
        }
    }
}

/// Device `index`'s primary context, made current on this thread.
///
/// # Safety
/// Calls into the CUDA driver; `index` must name a device.
pub unsafe fn primary_context(index: usize) -> csys::CUcontext {
    driver::init().expect("CUDA driver");
    let device = driver::device::get(index as i32).expect("CUDA device");
    let context = driver::primary_ctx::retain(device).expect("CUDA primary context");
    driver::ctx::set_current(context).expect("CUDA context");
    context
}

/// How side-stream work is ordered against cubecl's kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ordering {
    /// With context-wide events, on the device (CUDA 12.5 drivers and later).
    Device,
    /// By waiting on the host before and after.
    Host,
}

/// The ordering in use: device events where the driver has them, until a call fails.
static ORDERING: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
const UNKNOWN: u8 = 0;
const DEVICE: u8 = 1;
const HOST: u8 = 2;

fn ordering() -> Ordering {
    use std::sync::atomic::Ordering::Relaxed;
    match ORDERING.load(Relaxed) {
        DEVICE => Ordering::Device,
        HOST => Ordering::Host,
        _ => {
            let mut version = 0;
            // SAFETY: writes one int; the driver was initialised by cubecl.
            let known = unsafe { csys::cuDriverGetVersion(&mut version) }
                .result()
                .is_ok();
            let chosen = if known && version >= 12050 {
                DEVICE
            } else {
                HOST
            };
            let _ = ORDERING.compare_exchange(UNKNOWN, chosen, Relaxed, Relaxed);
            ordering()
        }
    }
}

/// Falls back to host fences for good after a context-event call failed.
fn fall_back_to_host(error: csys::CUresult) -> Ordering {
    use std::sync::atomic::Ordering::Relaxed;
    if ORDERING.swap(HOST, Relaxed) != HOST {
        eprintln!(
            "warning: CUDA context events failed ({error:?}); graft's cuBLAS products and \
             attention kernels now wait on the host, which is slower"
        );
    }
    Ordering::Host
}
