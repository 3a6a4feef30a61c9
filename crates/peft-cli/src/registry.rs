//! The one table of methods this tool knows: `peft_type` → method crate
//! ([`peft_core::method`]). Adding a method to every command is one line here.

use burn::module::Module;
use peft_core::method::{AttachMethod, Method, find};
use serde_json::Value;

use crate::error::Result;

/// Lists each method once and derives the look-ups every command uses.
macro_rules! registry {
    ($($method:expr),+ $(,)?) => {
        /// Every method, for the commands that work on files alone.
        pub fn methods() -> Vec<&'static dyn Method> {
            vec![$(&$method),+]
        }

        /// Every method, for the commands that attach adapters to a model of type `M`.
        pub fn attach_methods<M: Module + 'static>() -> Vec<&'static dyn AttachMethod<M>> {
            vec![$(&$method),+]
        }
    };
}

registry![peft_lora::Lora, peft_bone::Bone];

/// LoRA-FA: LoRA adapters (from `config`, or the folder `from`) with every A frozen, and PEFT's
/// LoRA-FA optimizer over them. `prepare` runs on the model before the optimizer is built (a
/// resumed run restores its parameter ids there).
pub fn lorafa<M: Module + 'static>(
    model: M,
    config: &Value,
    from: Option<&std::path::Path>,
    prepare: impl FnOnce(M) -> M,
    weight_decay: f64,
) -> Result<(
    Box<dyn peft_core::method::Adapted<M>>,
    burn::optim::ModuleOptimizer,
)> {
    let options = peft_lora::InjectOptions::default();
    let mut lora = match from {
        Some(dir) => {
            peft_lora::LoraModel::load(model, dir, &options).map_err(peft_core::PeftError::from)?
        }
        None => {
            let config =
                peft_lora::LoraConfig::from_json(config).map_err(peft_core::PeftError::from)?;
            peft_lora::LoraModel::inject(model, &config, &options)
                .map_err(peft_core::PeftError::from)?
        }
    };
    lora.model = prepare(lora.model);
    let lora = peft_lorafa::freeze_a(lora);
    let optimizer = peft_lorafa::LoraFaOptimizerConfig::new()
        .with_weight_decay(weight_decay)
        .init(&lora)
        .map_err(|e| peft_core::PeftError::Method(Box::new(e)))?;
    Ok((Box::new(lora), optimizer))
}

/// The method of an adapter config (by its `peft_type`).
pub fn method(config: &Value) -> Result<&'static dyn Method> {
    Ok(find(&methods(), |m| *m, config)?)
}

/// The method of an adapter config, able to attach to a model of type `M`.
pub fn attach_method<M: Module + 'static>(config: &Value) -> Result<&'static dyn AttachMethod<M>> {
    Ok(find(&attach_methods::<M>(), |m| *m as &dyn Method, config)?)
}

/// `model` with the adapter folder `adapter` of any registered method attached (`merge`: folded
/// into the weights), or `model` itself when there is no adapter.
pub fn apply_adapter<M: Module + 'static>(
    model: M,
    adapter: Option<&std::path::Path>,
    merge: bool,
) -> Result<M> {
    let Some(dir) = adapter else {
        return Ok(model);
    };
    let config = peft_core::io::read_config_json(dir)?;
    let adapted = attach_method::<M>(&config)?.load(
        model,
        dir,
        &peft_core::method::AttachOptions::default(),
    )?;
    Ok(if merge {
        adapted.merge_and_unload()?
    } else {
        adapted.model().clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peft_type_has_one_method() {
        let mut seen = Vec::new();
        for m in methods() {
            for t in m.peft_types() {
                assert!(!seen.contains(t), "{t} registered twice");
                seen.push(t);
            }
        }
        for t in ["LORA", "MISS", "BONE"] {
            let found = method(&serde_json::json!({ "peft_type": t })).unwrap();
            assert!(found.peft_types().contains(&t));
        }
        let e = method(&serde_json::json!({"peft_type": "IA3"}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("IA3") && e.contains("LORA"), "{e}");
    }
}
