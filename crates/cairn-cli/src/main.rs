//! The `cairn` command. See the `cairn_cli` library docs or `cairn --help`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc serves the many small allocations of decoding states much faster than the system
/// allocator (feature `mimalloc`, on by default; see docs/BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cairn_cli::cli::Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = runtime.block_on(cairn_cli::run(cli, &mut out));
    let result = result.and_then(|()| out.flush().map_err(cairn_cli::CliError::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Output piped into `head` and closed: not an error worth reporting.
        Err(cairn_cli::CliError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = out.flush();
            if json {
                let line = serde_json::json!({"error": e.one_line(), "kind": e.kind()});
                eprintln!("{line}");
            } else {
                eprintln!("error: {}", e.one_line());
            }
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
