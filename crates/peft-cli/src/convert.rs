//! `peft convert`: an adapter folder into another file format of its method, through the
//! registry (today: Bone `"BONE"`, PEFT ≤ 0.18 ↔ MiSS `"MISS"`, PEFT ≥ 0.17). The method gives the
//! new config and tensor names; tensor bytes are copied unchanged, streamed from the mapped file.

use std::path::Path;

use peft_core::io::{CONFIG_NAME, WEIGHTS_NAME, peft_json, read_config_json, write_atomic};

use crate::error::Result;
use crate::registry;
use crate::stream::{LazyFile, StreamWriter, pt_metadata};

/// Converts the folder `input` into the format `to` (a `peft_type`, any case; `None`: the
/// method's other format) at `output`. Returns the `peft_type` written.
pub fn convert(input: &Path, output: &Path, to: Option<&str>) -> Result<String> {
    let config = read_config_json(input)?;
    let method = registry::method(&config)?;
    let to = to.map(str::to_uppercase);
    let conversion = method.convert(&config, to.as_deref())?;
    let file = LazyFile::open(&input.join(WEIGHTS_NAME))?;
    let mut renamed = Vec::new();
    for (name, entry) in &file.entries {
        renamed.push((name.clone(), (conversion.rename)(name)?, entry.clone()));
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
        peft_json(&conversion.config).as_bytes(),
    )?;
    Ok(conversion.peft_type)
}
