//! Safetensors one tensor at a time: a reader that memory-maps the file, parses its header with
//! the `safetensors` crate and hands out a tensor's bytes on demand, and a writer that streams
//! tensors into a temporary file renamed at the end. Peak memory stays near the largest tensor,
//! whatever the file size.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use peft_core::method::TensorInfo;
use safetensors::SafeTensors;
use serde_json::{Map, Value};

use crate::error::{CliError, Result};

/// A tensor's entry in a safetensors header.
pub type Entry = TensorInfo;

/// The size in bytes of one element of `dtype`, if known.
pub fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "F32" | "I32" | "U32" => 4,
        "F64" | "I64" | "U64" => 8,
        _ => return None,
    })
}

/// Whether the dtype is a float type this tool converts (`F16`, `BF16`, `F32`, `F64`).
pub fn is_float(dtype: &str) -> bool {
    matches!(dtype, "F16" | "BF16" | "F32" | "F64")
}

/// Maps `file` read-only.
///
/// One of the project's three `unsafe` blocks (the others are `peft_train::memory`'s allocator
/// calls): a mapping is undefined behaviour if another process truncates the file while it is
/// mapped. Checkpoints are read-only inputs here, and this is how
/// the safetensors ecosystem (safetensors-rs, candle, mistral.rs) reads them without copying.
#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: see above; the map is read-only and lives as long as `LazyFile`.
    unsafe { Mmap::map(file) }
}

/// A memory-mapped safetensors file whose header was validated by the `safetensors` crate
/// (`SafeTensors::read_metadata`: every byte range inside the file, no overlaps).
#[derive(Debug)]
pub struct LazyFile {
    /// The file.
    pub path: PathBuf,
    map: Mmap,
    data_start: usize,
    ranges: HashMap<String, (usize, usize)>,
    /// Tensors by name.
    pub entries: BTreeMap<String, Entry>,
    /// `__metadata__`.
    pub metadata: Option<Map<String, Value>>,
}

impl LazyFile {
    /// Opens and maps a file and parses its header.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| CliError::io("cannot open", path, e))?;
        let map = map(&file).map_err(|e| CliError::io("cannot map", path, e))?;
        let (n, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| CliError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let mut entries = BTreeMap::new();
        let mut ranges = HashMap::new();
        for (name, info) in metadata.tensors() {
            let dtype = format!("{:?}", info.dtype);
            entries.insert(
                name.clone(),
                Entry {
                    dtype,
                    shape: info.shape.clone(),
                },
            );
            ranges.insert(name, info.data_offsets);
        }
        let metadata = metadata.metadata().as_ref().map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect()
        });
        Ok(Self {
            path: path.to_path_buf(),
            map,
            data_start: 8 + n,
            ranges,
            entries,
            metadata,
        })
    }

    /// The raw little-endian bytes of tensor `name`, straight from the mapping.
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        let (start, end) = self
            .ranges
            .get(name)
            .copied()
            .ok_or_else(|| CliError::Safetensors {
                path: self.path.clone(),
                message: format!("no tensor `{name}`"),
            })?;
        Ok(&self.map[self.data_start + start..self.data_start + end])
    }

    /// Tensor `name` as f32 values (float dtypes only).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let dtype = self
            .entries
            .get(name)
            .map(|e| e.dtype.clone())
            .unwrap_or_default();
        decode_f32(self.raw(name)?, &dtype).ok_or_else(|| CliError::Safetensors {
            path: self.path.clone(),
            message: format!("tensor `{name}` has dtype {dtype}, expected a float type"),
        })
    }
}

/// Decodes little-endian floats of `dtype` into f32.
pub fn decode_f32(raw: &[u8], dtype: &str) -> Option<Vec<f32>> {
    Some(match dtype {
        "F32" => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F64" => raw
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b) as f32
            })
            .collect(),
        "F16" => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Encodes f32 values as little-endian `dtype` (`F32`, `F64`, `F16`, `BF16`), rounding to
/// nearest even.
pub fn encode_f32(values: &[f32], dtype: &str) -> Option<Vec<u8>> {
    Some(match dtype {
        "F32" => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        "F64" => values
            .iter()
            .flat_map(|v| (*v as f64).to_le_bytes())
            .collect(),
        "F16" => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        "BF16" => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => return None,
    })
}

/// Writes a safetensors file tensor by tensor, in the order the header was declared, through a
/// temporary file that [`finish`](Self::finish) renames into place.
#[derive(Debug)]
pub struct StreamWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    order: Vec<(String, u64)>,
    next: usize,
}

impl StreamWriter {
    /// Creates the temporary file and writes the header for `tensors` (name, dtype, shape), laid
    /// out in this order.
    pub fn create(
        path: &Path,
        tensors: &[(String, String, Vec<usize>)],
        metadata: Option<&Map<String, Value>>,
    ) -> Result<Self> {
        let mut header = Map::new();
        if let Some(m) = metadata {
            header.insert("__metadata__".into(), Value::Object(m.clone()));
        }
        let mut offset = 0u64;
        let mut order = Vec::with_capacity(tensors.len());
        for (name, dtype, shape) in tensors {
            let size = dtype_size(dtype).ok_or_else(|| CliError::Safetensors {
                path: path.to_path_buf(),
                message: format!("cannot write tensor `{name}` of dtype {dtype}"),
            })?;
            let len = (size * shape.iter().product::<usize>()) as u64;
            let mut e = Map::new();
            e.insert("dtype".into(), Value::from(dtype.clone()));
            e.insert("shape".into(), Value::from(shape.clone()));
            e.insert(
                "data_offsets".into(),
                Value::from(vec![offset, offset + len]),
            );
            header.insert(name.clone(), Value::Object(e));
            order.push((name.clone(), len));
            offset += len;
        }
        let mut bytes =
            serde_json::to_vec(&Value::Object(header)).map_err(|e| CliError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        while !bytes.len().is_multiple_of(8) {
            bytes.push(b' ');
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| CliError::io("cannot create folder", dir, e))?;
        let tmp = peft_core::io::temp_path(path);
        let file = peft_core::fault::point("merge.create")
            .and_then(|_| File::create(&tmp))
            .map_err(|e| CliError::io("cannot write", path, e))?;
        let mut out = BufWriter::new(file);
        let header = out
            .write_all(&(bytes.len() as u64).to_le_bytes())
            .and_then(|_| out.write_all(&bytes));
        if let Err(e) = header {
            drop(out);
            let _ = std::fs::remove_file(&tmp);
            return Err(CliError::io("cannot write", path, e));
        }
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out,
            order,
            next: 0,
        })
    }

    /// Writes the next tensor's bytes; `name` must be the next one declared.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let bad = |message: String| CliError::Safetensors {
            path: self.path.clone(),
            message,
        };
        let (expected, len) = self
            .order
            .get(self.next)
            .ok_or_else(|| bad(format!("tensor `{name}` was not declared")))?;
        if expected != name || *len != bytes.len() as u64 {
            return Err(bad(format!(
                "expected tensor `{expected}` ({len} bytes), got `{name}` ({} bytes)",
                bytes.len()
            )));
        }
        // Fails after the first tensor: the file is then half written.
        if self.next == 1 {
            peft_core::fault::point("merge.tensor")
                .map_err(|e| CliError::io("cannot write", &self.path, e))?;
        }
        self.out
            .write_all(bytes)
            .map_err(|e| CliError::io("cannot write", &self.path, e))?;
        self.next += 1;
        Ok(())
    }

    /// Flushes and renames the file into place; fails if a declared tensor was not written.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.order.len() {
            return Err(CliError::Safetensors {
                path: self.path.clone(),
                message: format!(
                    "{} tensors were never written",
                    self.order.len() - self.next
                ),
            });
        }
        self.out
            .flush()
            .and_then(|_| peft_core::fault::point("merge.sync"))
            .and_then(|_| self.out.get_ref().sync_all())
            .and_then(|_| peft_core::fault::point("merge.rename"))
            .and_then(|_| std::fs::rename(&self.tmp, &self.path))
            .map_err(|e| CliError::io("cannot write", &self.path, e))?;
        self.tmp = PathBuf::new();
        peft_core::io::finish_write(&self.path);
        Ok(())
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The metadata written by PyTorch tools: `{"format": "pt"}`.
pub fn pt_metadata() -> Map<String, Value> {
    let m: HashMap<&str, &str> = HashMap::from([("format", "pt")]);
    m.into_iter()
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_read_back_with_the_safetensors_crate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let tensors = vec![
            ("b".to_string(), "BF16".to_string(), vec![3]),
            ("a".to_string(), "F32".to_string(), vec![2, 1]),
        ];
        let mut w = StreamWriter::create(&path, &tensors, Some(&pt_metadata())).unwrap();
        w.write("b", &encode_f32(&[1.0, 2.0, 3.0], "BF16").unwrap())
            .unwrap();
        w.write("a", &encode_f32(&[4.0, 5.0], "F32").unwrap())
            .unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("a").unwrap().shape(), [2, 1]);
        let lazy = LazyFile::open(&path).unwrap();
        assert_eq!(lazy.read_f32("b").unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(lazy.read_f32("a").unwrap(), [4.0, 5.0]);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn an_unfinished_writer_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let tensors = vec![("a".to_string(), "F32".to_string(), vec![1])];
        let w = StreamWriter::create(&path, &tensors, None).unwrap();
        assert!(w.finish().is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn truncated_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, [1u8, 0, 0]).unwrap();
        assert!(LazyFile::open(&path).is_err());
        std::fs::write(&path, [255u8, 0, 0, 0, 0, 0, 0, 0, b'{', b'}']).unwrap();
        assert!(LazyFile::open(&path).is_err());
    }
}
