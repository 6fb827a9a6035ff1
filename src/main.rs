//! The `unroll` command line: a thin `main` over the library; errors are printed with their
//! causes and turn into a non-zero exit status.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Mesa's Vulkan drivers print "error: XDG_RUNTIME_DIR is invalid" on headless machines
        // where it is unset, which reads like an error of ours. Point it at the temporary
        // directory; nothing of ours reads it.
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    match cli::run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // An error another process of a data-parallel run reports is not repeated here.
            let told = e
                .downcast_ref::<cli::Agreed>()
                .is_some_and(|a| a.error.is_none());
            if !told {
                cli::restore_stderr();
                eprintln!("{}: {e:#}", cli::error_label());
            }
            ExitCode::from(cli::exit_status(&e))
        }
    }
}
