fn main() {
    std::process::exit(graft::cli::main());
}
