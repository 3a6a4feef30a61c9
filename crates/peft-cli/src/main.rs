//! `peft`: inspect, merge and run PEFT adapters. Every failure is one line on stderr and a
//! non-zero exit status.

use std::path::Path;
use std::process::ExitCode;

use peft_cli::args::Args;
use peft_cli::error::{CliError, Result};
use peft_cli::{convert, forward, inspect, merge};

const USAGE: &str = "usage:
  peft inspect <adapter-dir> [--json]
  peft merge --base <model.safetensors | model-dir> --adapter <adapter-dir> --out <file.safetensors> [--dtype keep|f32|f16|bf16]
  peft forward --model <hf-dir> [--adapter <adapter-dir>] [--merge] --input-ids <ids.safetensors> --out <logits.safetensors>
  peft convert <bone-or-miss-dir> <out-dir> [--to miss|bone]

BURN_DEVICE picks the backend (default: the first compiled in).";

fn one_dir(args: &Args, what: &str) -> Result<String> {
    match args.positional.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(CliError::Usage(format!("missing <{what}>"))),
        more => Err(CliError::Usage(format!(
            "unexpected arguments {:?}",
            &more[1..]
        ))),
    }
}

fn no_positional(args: &Args) -> Result<()> {
    match args.positional.first() {
        Some(a) => Err(CliError::Usage(format!("unexpected argument `{a}`"))),
        None => Ok(()),
    }
}

fn run(argv: &[String]) -> Result<()> {
    let (command, rest) = match argv.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => return Err(CliError::Usage("no command given".into())),
    };
    match command {
        "inspect" => {
            let args = Args::parse(rest, &[], &["json"])?;
            let dir = one_dir(&args, "adapter-dir")?;
            let report = inspect::inspect(Path::new(&dir))?;
            if args.switch("json") {
                println!("{}", report.json());
            } else {
                println!("adapter:         {dir}\n{}", report.text());
            }
            Ok(())
        }
        "merge" => {
            let args = Args::parse(rest, &["base", "adapter", "out", "dtype"], &[])?;
            no_positional(&args)?;
            let dtype = merge::OutDtype::parse(args.value("dtype").unwrap_or("keep"))?;
            let out = Path::new(args.required("out")?);
            let changed = merge::merge(
                Path::new(args.required("base")?),
                Path::new(args.required("adapter")?),
                out,
                dtype,
            )?;
            eprintln!("peft: merged {changed} tensors into {}", out.display());
            Ok(())
        }
        "forward" => {
            let args = Args::parse(rest, &["model", "adapter", "input-ids", "out"], &["merge"])?;
            no_positional(&args)?;
            forward::forward(
                Path::new(args.required("model")?),
                args.value("adapter").map(Path::new),
                args.switch("merge"),
                Path::new(args.required("input-ids")?),
                Path::new(args.required("out")?),
            )
        }
        "convert" => {
            let args = Args::parse(rest, &["to"], &[])?;
            let [input, output] = args.positional.as_slice() else {
                return Err(CliError::Usage("convert takes <in-dir> <out-dir>".into()));
            };
            let to = match args.value("to") {
                None => None,
                Some("miss") => Some(peft_bone::BoneFormat::Miss),
                Some("bone") => Some(peft_bone::BoneFormat::Bone),
                Some(other) => {
                    return Err(CliError::Usage(format!(
                        "--to must be miss or bone, not `{other}`"
                    )));
                }
            };
            let written = convert::convert(Path::new(input), Path::new(output), to)?;
            eprintln!("peft: wrote a {} adapter to {output}", written.peft_type());
            Ok(())
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(CliError::Usage(format!("unknown command `{other}`"))),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error chain holds.
            eprintln!("peft: error: {}", e.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
