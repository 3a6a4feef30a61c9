//! Properties of the adapter-file reader over random shapes and dtypes (`proptest`): every float
//! dtype PEFT writes reads back as the value it encodes, and a write is read back unchanged.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::TensorData;
use half::{bf16, f16};
use proptest::prelude::*;
use safetensors::{Dtype, tensor::TensorView};

fn encode(values: &[f32], dtype: Dtype) -> (Vec<u8>, Vec<f32>) {
    match dtype {
        Dtype::F16 => {
            let h: Vec<f16> = values.iter().map(|v| f16::from_f32(*v)).collect();
            (
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        Dtype::BF16 => {
            let h: Vec<bf16> = values.iter().map(|v| bf16::from_f32(*v)).collect();
            (
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        Dtype::F64 => (
            values
                .iter()
                .flat_map(|v| f64::from(*v).to_le_bytes())
                .collect(),
            values.to_vec(),
        ),
        _ => (
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            values.to_vec(),
        ),
    }
}

fn tensors() -> impl Strategy<Value = (Vec<usize>, Vec<f32>, Dtype)> {
    prop::collection::vec(1usize..6, 1..4).prop_flat_map(|shape| {
        let n: usize = shape.iter().product();
        (
            Just(shape),
            prop::collection::vec(-1e4f32..1e4, n),
            prop::sample::select(vec![Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64]),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_float_dtype_reads_as_the_value_it_encodes((shape, values, dtype) in tensors()) {
        let (bytes, expected) = encode(&values, dtype);
        let view = TensorView::new(dtype, shape.clone(), &bytes).unwrap();
        let file = safetensors::serialize([("t", view)], None).unwrap();
        let read = peft_core::io::parse_safetensors(&file, Path::new("p.safetensors")).unwrap();
        let t = &read["t"];
        prop_assert_eq!(t.shape().to_vec(), shape);
        prop_assert_eq!(t.clone().try_into_vec::<f32>().unwrap(), expected);
    }

    #[test]
    fn a_written_file_reads_back_unchanged((shape, values, _dtype) in tensors()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adapter_model.safetensors");
        let tensors = BTreeMap::from([("a.lora_A.weight".to_string(), TensorData::new(values.clone(), shape.clone()))]);
        peft_core::io::write_safetensors(&path, &tensors).unwrap();
        let read = peft_core::io::read_safetensors(&path).unwrap();
        prop_assert_eq!(read.len(), 1);
        let t = &read["a.lora_A.weight"];
        prop_assert_eq!(t.shape().to_vec(), shape);
        prop_assert_eq!(t.clone().try_into_vec::<f32>().unwrap(), values);
        prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
