//! The `lossc` binary: parses the command line and runs it (see `lossc::cli`).

use clap::Parser;

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
