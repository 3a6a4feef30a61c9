//! OPT and Llama against transformers, and PEFT adapters on them against PEFT: logits, greedy
//! generation, unmerged and merged adapters, and adapter files written back unchanged.
#![allow(clippy::unwrap_used)]

mod common;

use burn::tensor::{Tensor, TensorData};
use common::*;
use peft_lora::{InjectOptions, LoraModel};
use peft_models::{AnyCausalLm, CausalLm, KvCache, ModelError, with_model};

fn load(name: &str) -> AnyCausalLm {
    AnyCausalLm::load(models().join(name).join("checkpoint"), &device()).unwrap()
}

fn logits<M: CausalLm>(m: &M) -> TensorData {
    m.forward(input_ids(&device())).into_data()
}

#[test]
fn base_logits_equal_transformers() {
    for (name, _) in MODELS {
        let expected = read(&format!("{name}/expected.safetensors"));
        let got = load(name).forward(input_ids(&device())).into_data();
        assert_close(&format!("{name} logits"), &got, &expected["logits"], 1e-4);
    }
}

/// Decoding with a key/value cache: the prompt's first two positions, then two more at once
/// (new queries after cached keys, causally masked among themselves), then one at a time. After
/// each chunk the logits of its last position equal transformers' at that position, for every
/// model (learned positions and RoPE, tied and untied heads) and every sequence of the batch.
/// The cache runs three ways: grown from the first chunk's size (each full buffer reallocated),
/// with room for every position from the start (each step written in place, stale zeros after
/// the filled positions), and truncated back to 3 positions and decoded again (positions
/// overwritten in place).
#[test]
fn cached_decoding_equals_transformers_logits() {
    for (name, _) in MODELS {
        let expected = read(&format!("{name}/expected.safetensors"))["logits"].clone();
        let expected = Tensor::<3>::from_data(expected, &device());
        let [batch, seq, vocab] = expected.dims();
        assert!(
            seq >= 6,
            "{name}: the fixture's sequence is too short for this test"
        );
        let ids = input_ids(&device());
        let model = load(name);
        // Feeds positions `start..seq` in chunks of 2, 2, 1, 1, ... and checks each chunk's
        // last logits.
        let decode = |cache: &mut KvCache, mut start: usize, what: &str| {
            for chunk in [2, 2].into_iter().chain(std::iter::repeat(1)) {
                if start + chunk > seq {
                    break;
                }
                let got = with_model!(&model, m => m.forward_cached(
                    ids.clone().narrow(1, start, chunk),
                    cache,
                ))
                .unwrap();
                start += chunk;
                assert_eq!(cache.len(), start, "{name}, {what}");
                assert_eq!(got.dims(), [batch, vocab], "{name}, {what}");
                let want = expected
                    .clone()
                    .narrow(1, start - 1, 1)
                    .reshape([batch, vocab]);
                assert_close(
                    &format!("{name}, {what}: cached logits at position {}", start - 1),
                    &got.into_data(),
                    &want.into_data(),
                    1e-4,
                );
            }
        };
        let mut roomy = KvCache::with_capacity(seq + 3);
        decode(&mut roomy, 0, "room for every position");
        roomy.truncate(3);
        assert_eq!(roomy.len(), 3, "{name}");
        decode(&mut roomy, 3, "truncated to 3");
        let mut cache = KvCache::new();
        decode(&mut cache, 0, "grown");
        // Past the model's positions, and another batch: errors, not panics.
        let positions = with_model!(&model, m => m.max_positions()).unwrap();
        let too_long = ids.clone().narrow(1, 0, 1).repeat_dim(1, positions);
        let err = with_model!(&model, m => m.forward_cached(too_long, &mut cache)).unwrap_err();
        assert!(matches!(err, ModelError::Input(_)), "{name}: {err}");
        let one_row = ids.clone().narrow(0, 0, 1).narrow(1, 0, 1);
        if batch > 1 {
            let err = with_model!(&model, m => m.forward_cached(one_row, &mut cache)).unwrap_err();
            assert!(
                err.to_string().contains("a cache serves one batch"),
                "{name}: {err}"
            );
        }
    }
}

#[test]
fn greedy_generation_equals_transformers() {
    for (name, _) in MODELS {
        let expected = read(&format!("{name}/expected.safetensors"))["generated"].clone();
        let model = load(name);
        let prompt = input_ids(&device()).narrow(1, 0, 4);
        let out = with_model!(&model, m => m.generate(prompt, 5, 0)).unwrap();
        assert_eq!(
            out.into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .unwrap(),
            expected.convert::<i64>().try_into_vec::<i64>().unwrap(),
            "{name}"
        );
    }
}

fn check_adapter<M: CausalLm>(model: M, name: &str, case: &str) {
    let dir = models().join(name).join("adapters").join(case);
    let expected = read(&format!("{name}/adapters/{case}/expected.safetensors"));
    let lora = LoraModel::load(model, dir.join("adapter"), &InjectOptions::default()).unwrap();
    let what = format!("{name}/{case}");
    assert_close(
        &format!("{what} unmerged"),
        &logits(&lora.model),
        &expected["logits"],
        1e-4,
    );

    // Written back: the same tensors under the same names.
    let saved = tempfile::tempdir().unwrap();
    lora.save(saved.path()).unwrap();
    let ours =
        peft_core::io::read_safetensors(&saved.path().join("adapter_model.safetensors")).unwrap();
    let theirs = read(&format!(
        "{name}/adapters/{case}/adapter/adapter_model.safetensors"
    ));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{what} keys"
    );
    for (k, v) in &theirs {
        assert_close(&format!("{what} {k}"), &ours[k], v, 0.0);
    }

    let merged = lora.merge_and_unload();
    assert_close(
        &format!("{what} merged"),
        &logits(&merged),
        &expected["merged_logits"],
        1e-4,
    );
}

#[test]
fn peft_adapters_give_peft_logits_unmerged_and_merged() {
    for (name, cases) in MODELS {
        for case in *cases {
            match load(name) {
                AnyCausalLm::Opt(m) => check_adapter(m, name, case),
                AnyCausalLm::Llama(m) => check_adapter(m, name, case),
            }
        }
    }
}

#[test]
fn half_precision_checkpoints_load_as_f32() {
    // llama_tied is stored in bf16 (its logits are compared in `base_logits_equal_transformers`).
    let path = models().join("llama_tied/checkpoint/model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        st.tensors()
            .iter()
            .all(|(_, v)| v.dtype() == safetensors::Dtype::BF16)
    );
    let sd = peft_models::Checkpoint::open(models().join("llama_tied/checkpoint"))
        .unwrap()
        .state_dict()
        .unwrap();
    let w = &sd["model.embed_tokens.weight"];
    assert_eq!(w.dtype(), burn::tensor::DType::F32);
    let v = w.clone().try_into_vec::<f32>().unwrap();
    assert!(v.iter().all(|x| half::bf16::from_f32(*x).to_f32() == *x));
    assert!(v.iter().any(|x| *x != 0.0));
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = AnyCausalLm::load(dir.path(), &device()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");

    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
    let err = AnyCausalLm::load(dir.path(), &device()).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedModelType(ref t) if t == "gpt2"),
        "{err}"
    );

    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models().join("llama/checkpoint/config.json")).unwrap(),
    )
    .unwrap();
    config["rope_parameters"]["rope_type"] = "yarn".into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = AnyCausalLm::load(dir.path(), &device()).unwrap_err();
    assert!(
        err.to_string().contains("rope_type") && err.to_string().contains("yarn"),
        "{err}"
    );

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    config["rope_parameters"]["rope_type"] = "default".into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = AnyCausalLm::load(dir.path(), &device()).unwrap_err();
    assert!(matches!(err, ModelError::NoWeights(_)), "{err}");

    // Weights of another model: every missing and unexpected name is reported.
    std::fs::copy(
        models().join("opt_pre/checkpoint/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let err = AnyCausalLm::load(dir.path(), &device()).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.0.self_attn.q_proj.weight"),
        "{err}"
    );
}

#[test]
fn out_of_range_ids_are_rejected_before_the_forward() {
    let model = load("opt_pre");
    let bad = TensorData::new(vec![1i64, 64], [1, 2]);
    let err = with_model!(&model, m => m.check_ids(&bad)).unwrap_err();
    assert!(err.to_string().contains("64"), "{err}");
    let long = TensorData::new(vec![3i64; 40], [1, 40]);
    assert!(with_model!(&model, m => m.check_ids(&long)).is_err());
}
