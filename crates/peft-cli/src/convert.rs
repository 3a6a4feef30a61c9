//! `peft convert`: Bone (`"BONE"`, PEFT ≤ 0.18) ↔ MiSS (`"MISS"`, PEFT ≥ 0.17) adapter folders,
//! as PEFT's `scripts/convert-bone-to-miss.py` does: the math of Bone's default and bat modes is
//! MiSS's, so only the type and the tensor names change. Tensor bytes are copied unchanged.

use std::path::Path;

use peft_bone::{BoneConfig, BoneFormat};
use peft_core::io::{CONFIG_NAME, WEIGHTS_NAME, peft_json, read_config_json, write_atomic};

use crate::error::{CliError, Result};
use crate::stream::{LazyFile, StreamWriter, pt_metadata};

/// Converts the folder `input` into `to` (or, with `None`, into the other format) at `output`.
/// Returns the format written. MiSS-only settings (`mini`, `miss_dropout > 0`) cannot become Bone.
pub fn convert(input: &Path, output: &Path, to: Option<BoneFormat>) -> Result<BoneFormat> {
    let json = read_config_json(input)?;
    let peft_type = peft_core::method::peft_type(&json)?;
    if !matches!(peft_type, "BONE" | "MISS") {
        return Err(CliError::Unsupported(format!(
            "`{}` holds a {peft_type} adapter; convert turns BONE folders into MISS and back, other methods have one format",
            input.display()
        )));
    }
    let mut config = BoneConfig::from_json(&json)?;
    let from = config.format;
    let to = to.unwrap_or(match from {
        BoneFormat::Bone => BoneFormat::Miss,
        BoneFormat::Miss => BoneFormat::Bone,
    });
    config.format = to;
    config.validate()?;
    let file = LazyFile::open(&input.join(WEIGHTS_NAME))?;
    let (old, new) = (
        format!(".{}", from.block_key()),
        format!(".{}", to.block_key()),
    );
    let mut renamed = Vec::new();
    for (name, entry) in &file.entries {
        let Some(stem) = name.strip_suffix(&old) else {
            return Err(CliError::Mismatch(format!(
                "unexpected tensor `{name}` in a {} adapter",
                from.peft_type()
            )));
        };
        renamed.push((name.clone(), format!("{stem}{new}"), entry.clone()));
    }
    renamed.sort_by(|a, b| a.1.cmp(&b.1));
    let declared: Vec<(String, String, Vec<usize>)> = renamed
        .iter()
        .map(|(_, n, e)| (n.clone(), e.dtype.clone(), e.shape.clone()))
        .collect();
    let metadata = file.metadata.clone().unwrap_or_else(pt_metadata);
    let mut writer = StreamWriter::create(&output.join(WEIGHTS_NAME), &declared, Some(&metadata))?;
    for (old_name, new_name, _) in &renamed {
        writer.write(new_name, file.raw(old_name)?)?;
    }
    writer.finish()?;
    write_atomic(
        &output.join(CONFIG_NAME),
        peft_json(&config.to_json()).as_bytes(),
    )?;
    Ok(to)
}
