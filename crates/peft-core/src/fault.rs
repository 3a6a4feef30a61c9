//! Fault injection for the project's writers, compiled in only with the `fault-injection`
//! feature (the test suite's build); without it every [`point`] is `Ok(())` and costs nothing.
//!
//! A writer calls [`point`] between its stages (`write_atomic.write`, `merge.rename`, …). The
//! environment variable `PEFT_FAULT=<point>[:<mode>]` makes the named point fail:
//!
//! | mode | what happens at the point |
//! |---|---|
//! | `error` (default) | the write fails with an I/O error |
//! | `enospc` | the write fails as on a full disk (`No space left on device`) |
//! | `erofs` | the write fails as on a read-only file system |
//! | `abort` | the process aborts, as if killed |
//! | `stall` | the process prints `peft: fault: stalled at <point>` on stderr and sleeps, so a test can kill it there |
//!
//! Tests use it to check that an interrupted write leaves the old file or the new one at the
//! destination, never a partial one (`crates/peft-cli/tests/faults.rs`).

/// Passes through fault point `name`: `Ok(())` unless `PEFT_FAULT` names it (and the build
/// has the `fault-injection` feature).
pub fn point(name: &str) -> std::io::Result<()> {
    #[cfg(feature = "fault-injection")]
    {
        injected(name)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = name;
        Ok(())
    }
}

#[cfg(feature = "fault-injection")]
fn injected(name: &str) -> std::io::Result<()> {
    use std::io::Error;
    let Ok(spec) = std::env::var("PEFT_FAULT") else {
        return Ok(());
    };
    let (at, mode) = spec.split_once(':').unwrap_or((spec.as_str(), "error"));
    if at != name {
        return Ok(());
    }
    match mode {
        "abort" => std::process::abort(),
        "stall" => {
            eprintln!("peft: fault: stalled at {name}");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        "enospc" => Err(Error::from_raw_os_error(28)),
        "erofs" => Err(Error::from_raw_os_error(30)),
        _ => Err(Error::other(format!("fault injected at {name}"))),
    }
}
