//! `loadgen`: see the library's documentation (`src/lib.rs`) and `loadgen --help`.

fn main() {
    std::process::exit(loadgen::run::main());
}
