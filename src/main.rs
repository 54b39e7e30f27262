#[global_allocator]
static ALLOC: stategrid::alloc_count::CountingAlloc = stategrid::alloc_count::CountingAlloc;

fn main() {
    std::process::exit(stategrid::cli::main());
}
