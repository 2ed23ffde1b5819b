fn main() {
    graft::model::host_memory::reuse_freed_buffers();
    std::process::exit(graft::cli::main());
}
