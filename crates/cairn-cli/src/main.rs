//! The `cairn` command. See the `cairn_cli` library docs or `cairn --help`.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

/// mimalloc serves the many small allocations of decoding states much faster than the system
/// allocator (feature `mimalloc`, on by default; see docs/BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match cairn_cli::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return bad_arguments(e),
    };
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
                let _ = writeln!(std::io::stderr(), "{line}");
            } else {
                let _ = writeln!(std::io::stderr(), "error: {}", e.one_line());
            }
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

/// Arguments clap refused (or `--help`, `--version`): with `--json` among them, the error is
/// one JSON object on stderr like every other error; else clap's own text.
fn bad_arguments(e: clap::Error) -> ExitCode {
    let wants_json = std::env::args_os().any(|a| a == "--json");
    if !wants_json || matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit()
    }
    let text = e.render().to_string();
    // The first paragraph, on one line: "the following required arguments were not
    // provided: <THREAD>".
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let first = first.join(" ");
    let line = serde_json::json!({
        "error": first.strip_prefix("error: ").unwrap_or(&first),
        "kind": "usage",
        "details": text.trim_end(),
    });
    let _ = writeln!(std::io::stderr(), "{line}");
    ExitCode::from(2)
}
