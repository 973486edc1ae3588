//! The `lossc` binary: parses the command line and runs it (see `lossc::cli`).

use clap::Parser;

/// Counts heap bytes, so that `lossc bench` can report the memory its calls hold at their peak.
#[global_allocator]
static ALLOC: lossc::memory::Counting = lossc::memory::Counting;

fn main() {
    let cli = lossc::cli::Cli::parse();
    match lossc::cli::run(cli) {
        Ok(out) => lossc::cli::emit(&out),
        Err(failure) => {
            failure.print();
            std::process::exit(1);
        }
    }
}
