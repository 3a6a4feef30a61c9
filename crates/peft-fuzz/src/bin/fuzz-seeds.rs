//! Writes every target's seed inputs (`peft_fuzz::seeds`) under the folder given, one folder
//! per target: `fuzz-seeds fuzz/seeds` (what `cargo xtask fuzz --seeds` runs).

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: fuzz-seeds OUT_DIR");
        return ExitCode::from(2);
    };
    let written = peft_fuzz::seeds::seeds().and_then(|seeds| {
        for (target, _) in peft_fuzz::TARGETS {
            let dir = out.join(target);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
        }
        for seed in &seeds {
            let dir = out.join(seed.target);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = dir.join(&seed.name);
            std::fs::write(&path, &seed.bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(seeds.len())
    });
    match written {
        Ok(n) => {
            eprintln!("fuzz-seeds: wrote {n} seeds under {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fuzz-seeds: {e}");
            ExitCode::FAILURE
        }
    }
}
