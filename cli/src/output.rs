//! Output that survives its reader going away: `quiver impair … | head -2` must end quietly, not panic with
//! "failed printing to stdout: Broken pipe" as `println!` does.

use std::io::Write;

/// Writes a line to stdout. When the reader is gone (a broken pipe) the command has nothing left to do: the
/// process exits 0 at once, as `head`'s writers expect. Other write errors are ignored.
pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout.write_fmt(format_args!("{args}\n")).and_then(|()| stdout.flush()) {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Writes a line to stderr, ignoring errors (a closed stderr is no reason to fail).
pub(crate) fn err_line(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(format_args!("{args}\n"));
}

/// `println!` for the CLI: see [`line`].
#[macro_export]
macro_rules! out {
    () => { $crate::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::line(format_args!($($arg)*)) };
}

/// `eprintln!` for the CLI: see [`err_line`].
#[macro_export]
macro_rules! err {
    () => { $crate::output::err_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::err_line(format_args!($($arg)*)) };
}
