//! `zccl-bench`: see [`zccl_bench::cli`] and docs/bench.md.

fn main() -> std::process::ExitCode {
    zccl_bench::cli::main()
}
