//! Weights that stay on the device for a whole run, each in a buffer of its own size.
//!
//! cubecl's memory pool hands out slices of pages whose sizes follow the card's total
//! memory (a quarter of it, then a sixteenth, a sixty-fourth...). On an H200 the first
//! tensor between about 550 MB and 4.4 GB (an 8B model's embedding) reserves an 8.8 GiB
//! page, so an NF4 base of 5.4 GiB held 13 GiB of pool before the first step. A base is
//! allocated once and kept, which is what burn's persistent allocation mode is for:
//! every tensor made inside it gets a buffer of exactly its size. Whatever the load
//! makes on the device and drops gets such a buffer too (graft's loader converts and
//! quantizes on the host, so it makes little); once the load is done those are free,
//! and an explicit cleanup gives them back, with any page of the ordinary pools left
//! empty. If the load panics, the thread's stream stays in persistent mode: the process
//! is ending then.
//!
//! Where the allocator is not cubecl's (the CPU), burn runs the load as it is.

use burn::tensor::backend::Backend;
use std::cell::Cell;

/// Runs `load` with every device allocation it makes sized exactly and kept outside the
/// pool's shared pages, then releases what the load allocated and no longer holds.
pub fn load_resident<B: Backend, T>(device: &B::Device, load: impl FnOnce() -> T) -> T {
    let once = Cell::new(Some(load));
    let loaded = B::memory_persistent_allocations(device, OnCaller(&once), |once| {
        let loaded = once
            .0
            .take()
            .expect("burn runs the allocation closure once")();
        // burn's fusion queues device work and runs it when a fused block closes; the
        // sync runs what the load queued while the allocations are still exact-sized
        // (without it a cast made in the load allocated its output from the ordinary
        // pool after the mode was switched back, as seen on an H200).
        let _ = B::sync(device);
        OnCaller(loaded)
    });
    // The temporaries are free only once the device has run what used them.
    let _ = B::sync(device);
    B::memory_cleanup(device);
    loaded.0
}

/// A value that moves into burn's allocation closure and back out on the same call.
///
/// burn asks the closure, its input and its output to be `Send` because a backend may
/// run it on another thread; cubecl's (`ComputeClient::memory_persistent_allocation`)
/// and burn's default run it on the caller's thread before returning. Even on another
/// thread, the caller would wait for it, so nothing here is touched from two threads at
/// once: the loader's borrowed progress callback is only ever used by one.
struct OnCaller<T>(T);

// SAFETY: see the type's comment; the wrapped value is used by one thread at a time,
// the calling thread waiting for the closure to return it.
unsafe impl<T> Send for OnCaller<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Tensor, TensorData};

    #[test]
    fn the_load_runs_once_and_its_value_comes_back() {
        let device = Default::default();
        let mut calls = 0;
        let tensor = load_resident::<Flex, _>(&device, || {
            calls += 1;
            Tensor::<Flex, 1>::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), &device)
        });
        assert_eq!(calls, 1);
        assert_eq!(tensor.into_data().to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
    }

    /// On a CUDA card: a weight uploaded as 640 MB of f32 and cast to bf16 inside the
    /// load grows the pool by the bf16 tensor's 320 MiB, where an ordinary allocation of
    /// it takes a slice of a page sized from the card (on an H200, 2.2 GiB); the f32
    /// copy is given back. (Under burn's fusion the cast is queued and may run after the
    /// closure; `load_resident` syncs inside it, so the cast runs in persistent mode.)
    #[cfg(feature = "cuda")]
    #[test]
    fn a_resident_weight_holds_its_size_of_the_pool_on_cuda() {
        use burn::backend::Cuda;
        use burn::cubecl::{cuda::CudaRuntime, Runtime};
        use burn::tensor::{DType, FloatDType};
        use cudarc::driver::result as driver;
        if let Err(why) = driver::init().and_then(|()| driver::device::get_count().map(|_| ())) {
            eprintln!("skipped: no CUDA driver ({why:?})");
            return;
        }
        type B = Cuda<f32>;
        let device = Default::default();
        let client = CudaRuntime::client(&device);
        let reserved = || client.memory_usage().unwrap().bytes_reserved;
        let before = reserved();
        let len = 160 * 1024 * 1024; // 640 MB in f32, 320 MB in bf16
        let weight = load_resident::<B, _>(&device, || {
            let f32s =
                Tensor::<B, 1>::from_data(TensorData::new(vec![0.5f32; len], [len]), &device);
            f32s.cast(FloatDType::BF16)
        });
        assert_eq!(weight.dtype(), DType::BF16);
        let grown = reserved() - before;
        assert!(
            grown >= 2 * len as u64 && grown < 2 * len as u64 + (64 << 20),
            "the pool grew by {grown} bytes for a {} byte weight",
            2 * len
        );
        assert_eq!(
            weight
                .narrow(0, len - 1, 1)
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap(),
            vec![0.5]
        );
    }
}
