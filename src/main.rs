fn main() {
    graft::compute::host_memory::reuse_freed_buffers();
    graft::compute::cpu_pool::train_on_this_thread();
    std::process::exit(graft::cli::main());
}
