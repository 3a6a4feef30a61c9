//! The command line, declared with `clap`: `peft <command> --help` prints these docs.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Inspect, merge, run and convert PEFT adapter folders (LoRA, DoRA, LoRA-FA-trained, MiSS,
/// Bone) with burn.
///
/// The method of an adapter is read from its `adapter_config.json` (`peft_type`, `use_dora`).
/// BURN_DEVICE picks the backend for `forward` (flex, ndarray, wgpu, cuda; default: the first
/// compiled in). Every failure is one line on stderr and a non-zero exit status.
#[derive(Debug, Parser)]
#[command(name = "peft", version, propagate_version = true)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show an adapter's method, ranks, alphas, targets, parameter count and file size, from its
    /// config and file header alone.
    Inspect {
        /// The adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
        adapter: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fold an adapter into a transformers checkpoint and write one merged safetensors file.
    ///
    /// Works on the state dict, for any architecture (GPT-2 `Conv1D` included), tensor by tensor:
    /// memory stays near the largest tensor. Refuses adapters with NaN or infinite values or
    /// non-float tensors (PEFT's `safe_merge`), and an --out that is one of the inputs. The output
    /// is written to a temporary file and renamed into place, so a failure leaves nothing behind.
    Merge {
        /// The base checkpoint: a `.safetensors` file, or a folder with `model.safetensors` or
        /// shards (`model.safetensors.index.json`).
        #[arg(long)]
        base: PathBuf,
        /// The adapter folder.
        #[arg(long)]
        adapter: PathBuf,
        /// The merged `.safetensors` file to write.
        #[arg(long)]
        out: PathBuf,
        /// The dtype of float tensors in the output.
        #[arg(long, value_enum, default_value_t = OutDtypeArg::Keep)]
        dtype: OutDtypeArg,
        /// Allow --out to replace the base checkpoint when it is a single file. This is safe: the
        /// base stays mapped and the merged file replaces it only by the final rename. Without
        /// --force it is refused as a likely mistake; a shard of a sharded base is never allowed.
        #[arg(long)]
        force: bool,
    },
    /// Compute the logits of an OPT or Llama checkpoint, optionally with an adapter, unmerged or
    /// merged, and write them as `logits` `[batch, seq, vocab]` (f32).
    Forward {
        /// The transformers checkpoint folder (`config.json` + weights).
        #[arg(long)]
        model: PathBuf,
        /// An adapter folder of any method to attach.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Merge the adapter into the weights before the forward pass.
        #[arg(long, requires = "adapter")]
        merge: bool,
        /// A safetensors file with an I64 or I32 tensor `input_ids` `[batch, seq]`.
        #[arg(long)]
        input_ids: PathBuf,
        /// The safetensors file to write the logits to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert an adapter folder into another file format of its method: a Bone folder
    /// (`peft_type` BONE, PEFT ≤ 0.18) into MiSS (PEFT ≥ 0.17) or back, as PEFT's
    /// `convert-bone-to-miss.py` does; tensor bytes are copied unchanged. Methods with one format
    /// (LoRA, DoRA) say so.
    Convert {
        /// The adapter folder.
        input: PathBuf,
        /// The folder to write.
        output: PathBuf,
        /// The `peft_type` to write, e.g. `miss` or `bone` (default: the method's other format).
        #[arg(long)]
        to: Option<String>,
    },
}

/// `--dtype` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutDtypeArg {
    /// Each tensor keeps its dtype.
    Keep,
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_every_command() {
        let c = Cli::try_parse_from([
            "peft",
            "merge",
            "--base",
            "b",
            "--adapter",
            "a",
            "--out",
            "o",
            "--dtype",
            "bf16",
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            Command::Merge {
                dtype: OutDtypeArg::Bf16,
                force: false,
                ..
            }
        ));
        assert!(
            Cli::try_parse_from([
                "peft",
                "forward",
                "--model",
                "m",
                "--merge",
                "--input-ids",
                "i",
                "--out",
                "o"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["peft", "inspect"]).is_err());
        assert!(
            Cli::try_parse_from([
                "peft",
                "merge",
                "--base",
                "b",
                "--adapter",
                "a",
                "--out",
                "o",
                "--dtype",
                "f8"
            ])
            .is_err()
        );
    }
}
