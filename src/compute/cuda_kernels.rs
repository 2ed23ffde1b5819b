//! graft's own CUDA kernels: CUDA C++ sources compiled at run time by NVRTC (which
//! burn-cuda already loads), and launched on the side stream (`super::cuda_stream`)
//! from fusion custom ops with the device addresses of cubecl's buffers.

use std::ffi::{c_void, CString};

use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl_runtime::server::{Binding, ComputeServer};
use cudarc::driver::result as driver;
use cudarc::driver::sys as csys;

use super::cuda_stream::{self, CudaServer};

use super::devices::MAX_DEVICES;

/// One value per CUDA device, built on that device's first use and kept for the
/// process: compiled functions belong to one device's context, so data-parallel
/// training needs each device's own.
pub struct PerDevice<T: 'static> {
    slots: [std::sync::OnceLock<T>; MAX_DEVICES],
}

impl<T: 'static> PerDevice<T> {
    pub const fn new() -> Self {
        PerDevice {
            slots: [const { std::sync::OnceLock::new() }; MAX_DEVICES],
        }
    }

    /// Device `index`'s value, built by `build` the first time.
    pub fn get_or_init(&'static self, index: usize, build: impl FnOnce() -> T) -> &'static T {
        assert!(
            index < MAX_DEVICES,
            "CUDA device {index}: graft uses devices 0..{MAX_DEVICES}"
        );
        self.slots[index].get_or_init(build)
    }

    /// Device `index`'s value, if it was built.
    pub fn get(&'static self, index: usize) -> Option<&'static T> {
        self.slots.get(index).and_then(std::sync::OnceLock::get)
    }
}

impl<T: 'static> PerDevice<Option<T>> {
    /// Device `index`'s kernels, built by `build` from the compiled `source` on first
    /// use; `None` where NVRTC cannot build them, after a warning that names `what`
    /// and says what runs `instead`.
    pub fn build_or_warn(
        &'static self,
        index: usize,
        source: &str,
        (what, instead): (&str, &str),
        build: impl FnOnce(&Module) -> Result<T, String>,
    ) -> Option<&'static T> {
        self.get_or_init(index, || {
            match compile(source, index, &[]).and_then(|module| build(&module)) {
                Ok(kernels) => Some(kernels),
                Err(message) => {
                    eprintln!("warning: graft's {what} could not be built ({message}); {instead}");
                    None
                }
            }
        })
        .as_ref()
    }
}

impl<T: 'static> Default for PerDevice<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A compiled module in device `index`'s primary context.
pub struct Module {
    module: csys::CUmodule,
    /// Compute capability, major and minor.
    pub capability: (i32, i32),
}

/// The CUDA toolkit's headers (`CUDA_PATH`, else /usr/local/cuda).
fn cuda_include_dir() -> std::path::PathBuf {
    let root = std::env::var_os("CUDA_PATH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/local/cuda".into());
    root.join("include")
}

/// Device `index`'s compute capability, major and minor, as the driver reports it.
///
/// # Safety
/// The driver must be initialized (cuInit).
unsafe fn read_capability(index: usize) -> Result<(i32, i32), driver::DriverError> {
    let device = driver::device::get(index as i32)?;
    let attribute = |a| driver::device::get_attribute(device, a);
    Ok((
        attribute(csys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        attribute(csys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    ))
}

/// Whether this machine has the CUDA driver's library (libcuda), looked for once:
/// without it cudarc panics at the first driver call, so callers ask here first.
pub fn driver_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: only opens (and closes) the library to see that it loads.
    *PRESENT.get_or_init(|| unsafe { csys::is_culib_present() })
}

/// Why CUDA cannot run on this machine, naming what to install, if it cannot.
pub fn missing_driver() -> Option<String> {
    (!driver_present()).then(|| {
        "this machine has no CUDA driver (libcuda.so was not found on the library path): \
         install the NVIDIA driver, or run on the CPU with --backend cpu"
            .to_string()
    })
}

/// Device `index`'s compute capability without touching any context (for the record
/// of an execution, before the device is in use); `None` without a driver or device.
pub fn device_capability(index: usize) -> Option<(i32, i32)> {
    if !driver_present() {
        return None;
    }
    // SAFETY: cuInit may be called more than once; it precedes the reads.
    unsafe {
        driver::init().ok()?;
        read_capability(index).ok()
    }
}

/// Device `index`'s compute capability, major and minor, with its primary context made
/// current on this thread.
pub fn capability(index: usize) -> Result<(i32, i32), String> {
    // SAFETY: making the primary context initializes the driver first.
    unsafe {
        cuda_stream::primary_context(index);
        read_capability(index).map_err(|e| format!("{e:?}"))
    }
}

/// Compiles `source` for device `index` and loads it. `headers` names headers the
/// source includes from the CUDA toolkit, checked for first so that a machine without
/// them gets a clear reason.
pub fn compile(source: &str, index: usize, headers: &[&str]) -> Result<Module, String> {
    let (major, minor) = capability(index)?;
    // SAFETY: NVRTC and driver calls with valid arguments; the module lives for the
    // process, in the primary context cubecl's kernels use.
    unsafe {
        // 9.0 as sm_90a: the architecture-specific target that has wgmma.
        let suffix = if (major, minor) == (9, 0) { "a" } else { "" };
        let mut options = vec![
            format!("--gpu-architecture=sm_{major}{minor}{suffix}"),
            "--std=c++17".to_string(),
        ];
        if !headers.is_empty() {
            let include = cuda_include_dir();
            if let Some(missing) = headers.iter().find(|h| !include.join(h).exists()) {
                return Err(format!(
                    "{missing} is not in {} (set CUDA_PATH)",
                    include.display()
                ));
            }
            options.push(format!("--include-path={}", include.display()));
        }
        let source = CString::new(source).expect("source has no NUL");
        let program = cudarc::nvrtc::result::create_program(&source, None)
            .map_err(|e| format!("NVRTC: {e:?}"))?;
        if cudarc::nvrtc::result::compile_program(program, &options).is_err() {
            let log = cudarc::nvrtc::result::get_program_log(program)
                .map(|raw| {
                    std::ffi::CStr::from_ptr(raw.as_ptr())
                        .to_string_lossy()
                        .into_owned()
                })
                .unwrap_or_default();
            return Err(format!("NVRTC compilation failed:\n{log}"));
        }
        let ptx = cudarc::nvrtc::result::get_ptx(program).map_err(|e| format!("{e:?}"))?;
        let _ = cudarc::nvrtc::result::destroy_program(program);
        let module = driver::module::load_data(ptx.as_ptr() as *const c_void)
            .map_err(|e| format!("{e:?}"))?;
        Ok(Module {
            module,
            capability: (major, minor),
        })
    }
}

impl Module {
    /// The `int` array `name` that the source defines as an `extern "C" __device__`
    /// constant, `len` long: how a source states the geometry its kernels are
    /// written for.
    pub fn ints(&self, name: &str, len: usize) -> Result<Vec<i32>, String> {
        let mut values = vec![0i32; len];
        // SAFETY: the module's context is current on this thread (compile made it so);
        // the copy is bounded by the symbol's own size, checked first.
        unsafe {
            let (pointer, bytes) =
                driver::module::get_global(self.module, CString::new(name).unwrap())
                    .map_err(|e| format!("{name}: {e:?}"))?;
            if bytes != len * std::mem::size_of::<i32>() {
                return Err(format!("{name} holds {bytes} bytes, not {len} ints"));
            }
            driver::memcpy_dtoh_sync(&mut values, pointer).map_err(|e| format!("{name}: {e:?}"))?;
        }
        Ok(values)
    }

    /// Kernels `name_bf16` and `name_f32`, without dynamic shared memory.
    pub fn by_dtype(&self, name: &str) -> Result<ByDtype, String> {
        Ok(ByDtype {
            bf16: self.function(&format!("{name}_bf16"), 0)?,
            f32: self.function(&format!("{name}_f32"), 0)?,
        })
    }

    /// Kernel `name`, allowed `shared` bytes of dynamic shared memory.
    pub fn function(&self, name: &str, shared: u32) -> Result<Function, String> {
        // SAFETY: the module is loaded; the attribute call only raises a limit.
        unsafe {
            let f = driver::module::get_function(self.module, CString::new(name).unwrap())
                .map_err(|e| format!("{name}: {e:?}"))?;
            if shared > 0 {
                driver::function::set_function_attribute(
                    f,
                    csys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared as i32,
                )
                .map_err(|e| format!("{name}: {shared} bytes of shared memory: {e:?}"))?;
            }
            Ok(Function(f))
        }
    }
}

/// A kernel of a loaded module.
#[derive(Debug, Clone, Copy)]
pub struct Function(csys::CUfunction);

/// One kernel compiled for bf16 and for f32 elements (`NAME_bf16`, `NAME_f32` in the
/// source), picked by the dtype of the tensors it runs on.
#[derive(Debug, Clone, Copy)]
pub struct ByDtype {
    bf16: Function,
    f32: Function,
}

impl ByDtype {
    /// The kernel for `dtype`; callers admit only bf16 and f32.
    pub fn of(&self, dtype: DType) -> Function {
        match dtype {
            DType::BF16 => self.bf16,
            DType::F32 => self.f32,
            other => unreachable!("the kernels are built for bf16 and f32, not {other:?}"),
        }
    }
}

// SAFETY: CUfunction handles are valid in their context from any thread; they are
// only launched with that context current (cuda_stream::run_ordered).
unsafe impl Send for Function {}
unsafe impl Sync for Function {}

/// A contiguous buffer shaped like `like`'s device, for a custom op's outputs.
pub fn empty(
    like: &CubeTensor<CudaRuntime>,
    shape: Shape,
    dtype: DType,
) -> CubeTensor<CudaRuntime> {
    burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        shape,
        dtype,
    )
}

/// Queues `work` on cubecl's device thread, which runs it on the side stream with the
/// device addresses of `buffers` (in order), ordered against cubecl's kernels.
pub fn launch(
    like: &CubeTensor<CudaRuntime>,
    buffers: Vec<Binding>,
    work: impl FnOnce(Vec<u64>, csys::CUstream) + Send + 'static,
) {
    let device = like.device.clone();
    let index = device.index;
    cuda_stream::submit(&device, move |server: &mut CudaServer, stream_id| {
        // The guards keep the buffers alive until the launches are queued; the side
        // stream's ordering keeps cubecl from reusing them before the kernels end.
        let guards: Vec<_> = buffers
            .into_iter()
            .map(|binding| {
                server
                    .get_resource(binding, stream_id)
                    .expect("cubecl buffer")
            })
            .collect();
        let pointers: Vec<u64> = guards.iter().map(|g| g.resource().ptr).collect();
        cuda_stream::run_ordered(server, stream_id, index, |side| work(pointers, side.stream));
        drop(guards);
    });
}

/// A kernel's arguments, each boxed so that its address stays fixed until the launch.
#[derive(Default)]
pub struct Args {
    values: Vec<Box<dyn std::any::Any>>,
    pointers: Vec<*mut c_void>,
}

impl Args {
    /// Appends one argument, passed by value as its C counterpart (`#[repr(C)]` for
    /// structs, `u64` for device pointers).
    pub fn push<T: 'static>(&mut self, value: T) -> &mut Self {
        let mut boxed = Box::new(value);
        self.pointers.push(&mut *boxed as *mut T as *mut c_void);
        self.values.push(boxed);
        self
    }

    /// Launches `f` on `stream` with these arguments.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in order and type, and the
    /// addresses among them must stay valid until the kernel ends.
    pub unsafe fn launch(
        mut self,
        f: Function,
        grid: (u32, u32),
        threads: u32,
        shared: u32,
        stream: csys::CUstream,
    ) {
        driver::launch_kernel(
            f.0,
            (grid.0, grid.1, 1),
            (threads, 1, 1),
            shared,
            stream,
            &mut self.pointers,
        )
        .expect("kernel launch");
    }
}

/// For the GPU tests: why they cannot run here (no driver, none of its devices), if
/// they cannot; each then says it was skipped.
#[cfg(test)]
pub(crate) fn no_gpu() -> Option<String> {
    if let Some(why) = missing_driver() {
        return Some(why);
    }
    match driver::init().and_then(|()| driver::device::get_count()) {
        Ok(n) if n > 0 => None,
        Ok(_) => Some("no CUDA device".into()),
        Err(e) => Some(format!("no CUDA driver: {e:?}")),
    }
}
