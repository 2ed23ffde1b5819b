fn main() {
    graft::compute::host_memory::reuse_freed_buffers();
    std::process::exit(graft::cli::main());
}
