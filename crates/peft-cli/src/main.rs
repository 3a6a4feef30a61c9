//! `peft`: inspect, merge, run and convert PEFT adapters. Every failure is one line on stderr
//! and a non-zero exit status.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use peft_cli::cli::{Cli, Command};
use peft_cli::error::Result;
use peft_cli::{convert, eval, forward, generate, inspect, merge, train};

/// Prints a line to stdout. A closed pipe (`peft eval --show | head`) ends the program quietly,
/// as Unix tools do, instead of panicking.
fn say(text: std::fmt::Arguments<'_>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => {
            other.map_err(|e| peft_cli::error::CliError::io("write", Path::new("<stdout>"), e))
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { adapter, json } => {
            let report = inspect::inspect(&adapter)?;
            if json {
                say(format_args!("{}", report.json()))?;
            } else {
                say(format_args!(
                    "adapter:         {}\n{}",
                    adapter.display(),
                    report.text()
                ))?;
            }
        }
        Command::Merge {
            base,
            adapter,
            out,
            dtype,
            force,
        } => {
            let options = merge::MergeOptions {
                dtype: dtype.into(),
                force,
            };
            let changed = merge::merge(&base, &adapter, &out, &options)?;
            eprintln!("peft: merged {changed} tensors into {}", out.display());
        }
        Command::Forward {
            run,
            input_ids,
            out,
        } => forward::forward(
            &run.model,
            run.adapter.as_deref(),
            run.merge,
            &input_ids,
            &out,
        )?,
        Command::Train(cmd) => {
            let args = cmd.into_args();
            let report = train::train(&args)?;
            let first = report.losses.first().copied().unwrap_or(f32::NAN);
            let last = report.losses.last().copied().unwrap_or(f32::NAN);
            let valid = report
                .valid
                .last()
                .map(|(_, v)| format!(", valid loss {v:.4}"))
                .unwrap_or_default();
            eprintln!(
                "peft: trained {} steps: loss {first:.4} -> {last:.4}{valid}, {:.0} tokens/s; adapter in {}",
                report.losses.len(),
                report.tokens_per_s,
                args.settings.out.display()
            );
            if args.settings.keep_packs {
                match report.kept_pack_bytes {
                    0 => {
                        eprintln!("peft: --keep-packs kept nothing: this backend packs no weights")
                    }
                    n => eprintln!(
                        "peft: the frozen weights' kept packs took {:.1} MiB",
                        n as f64 / (1u64 << 20) as f64
                    ),
                }
            }
            if let Some((before, after)) = &report.test {
                say(format_args!("test before training: {before}"))?;
                say(format_args!("test after training:  {after}"))?;
            }
        }
        Command::Eval {
            run,
            tokenizer,
            data,
            show,
        } => {
            let tok = tokenizer.as_deref().unwrap_or(&run.model);
            let report = eval::evaluate(&run, tok, &data)?;
            if show {
                for a in &report.answers {
                    let mark = if a.correct { "right" } else { "wrong" };
                    say(format_args!(
                        "{mark}  {:?} -> {:?} (expected {:?})",
                        a.prompt, a.got, a.expected
                    ))?;
                }
            }
            say(format_args!("{report}"))?;
        }
        Command::Generate(cmd) => {
            let mut stdout = std::io::stdout().lock();
            let out = generate::generate(&cmd, &mut stdout)?;
            if out.finish == peft_train::generate::Finish::Positions {
                eprintln!("peft: stopped at the model's last position");
            }
        }
        Command::Convert { input, output, to } => {
            let written = convert::convert(&input, &output, to.as_deref())?;
            eprintln!("peft: wrote a {written} adapter to {}", output.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // Large freed buffers are reused instead of mapped and zeroed again on every step.
    peft_train::memory::retain_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            // clap's message without its usage block and tips: one line, like every other error.
            let rendered = e.render().to_string();
            let message = rendered.split("\nUsage:").next().unwrap_or_default();
            let message: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("peft: error: {message} (see `peft --help`)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error chain holds.
            eprintln!("peft: error: {}", e.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
