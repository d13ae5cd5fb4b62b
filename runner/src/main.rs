//! The `cargo-sandbox-test` binary.

use cargo_sandbox_test::cli;
use cargo_sandbox_test::container;

fn main() {
    // The zygote must be forked while this process has a single thread:
    // before argument parsing could start one, and before logging.
    let zygote = match container::start_zygote() {
        Ok(z) => z,
        Err(err) => {
            eprintln!("error: cannot start the container zygote: {err}");
            std::process::exit(cli::exit_code::SETUP_FAILED);
        }
    };
    let args = cli::parse_args();
    let filter = match args.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let env_filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .init();

    let code = cli::run(args, zygote);
    std::process::exit(code);
}
