//! Device names as the command line takes them: `flex`, `ndarray`, `wgpu[:N]`, `cuda[:N]`.

use burn::tensor::Device;

use crate::error::{PeftError, Result};

/// The backends this build has, by the names [`parse_device`] takes.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// Parses one device name: `flex`, `ndarray`, `wgpu` (wgpu's default adapter), `wgpu:N` (the
/// N-th discrete GPU), `cuda` / `cuda:N` (CUDA device N, default 0). A backend this build was
/// compiled without is an error that lists the ones it has.
///
/// ```
/// let device = peft_core::device::parse_device("flex").unwrap();
/// assert!(peft_core::device::parse_device("tpu").is_err());
/// # let _ = device;
/// ```
pub fn parse_device(spec: &str) -> Result<Device> {
    let err = |reason: String| PeftError::Device {
        spec: spec.to_string(),
        reason,
    };
    let (name, index) = match spec.split_once(':') {
        Some((n, i)) => {
            let i: usize = i
                .parse()
                .map_err(|_| err(format!("`{i}` is not a device index")))?;
            (n, Some(i))
        }
        None => (spec, None),
    };
    let missing = || {
        err(format!(
            "this build has no `{name}` backend (it has: {}; rebuild with `--features {name}`)",
            compiled_backends().join(", ")
        ))
    };
    let device = match (name, index) {
        ("flex" | "ndarray", Some(_)) => return Err(err(format!("`{name}` takes no index"))),
        ("flex", None) => backends::flex(),
        ("ndarray", None) => backends::ndarray(),
        ("wgpu", i) => backends::wgpu(i),
        ("cuda", i) => backends::cuda(i.unwrap_or(0)),
        (other, _) => {
            return Err(err(format!(
                "unknown backend `{other}` (expected flex, ndarray, wgpu[:N] or cuda[:N])"
            )));
        }
    };
    device.ok_or_else(missing)
}

/// One constructor per backend: `None` when this build does not have it.
mod backends {
    use burn::tensor::Device;

    #[cfg(feature = "flex")]
    pub fn flex() -> Option<Device> {
        Some(Device::flex())
    }
    #[cfg(not(feature = "flex"))]
    pub fn flex() -> Option<Device> {
        None
    }

    #[cfg(feature = "ndarray")]
    #[allow(deprecated)] // burn 0.22 deprecates ndarray in favour of flex; we still test on it
    pub fn ndarray() -> Option<Device> {
        Some(Device::ndarray())
    }
    #[cfg(not(feature = "ndarray"))]
    pub fn ndarray() -> Option<Device> {
        None
    }

    /// `Some(i)`: the i-th discrete GPU; `None`: wgpu's default adapter.
    #[cfg(feature = "wgpu")]
    pub fn wgpu(index: Option<usize>) -> Option<Device> {
        use burn::tensor::DeviceKind;
        Some(Device::wgpu(match index {
            Some(i) => DeviceKind::DiscreteGpu(i),
            None => DeviceKind::DefaultDevice,
        }))
    }
    #[cfg(not(feature = "wgpu"))]
    pub fn wgpu(_index: Option<usize>) -> Option<Device> {
        None
    }

    #[cfg(feature = "cuda")]
    pub fn cuda(index: usize) -> Option<Device> {
        Some(Device::cuda(index))
    }
    #[cfg(not(feature = "cuda"))]
    pub fn cuda(_index: usize) -> Option<Device> {
        None
    }
}

/// Parses a comma-separated list of device names (see [`parse_device`]).
pub fn parse_devices(list: &str) -> Result<Vec<Device>> {
    list.split(',').map(|s| parse_device(s.trim())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_wrong() {
        let e = parse_device("tpu:0").unwrap_err().to_string();
        assert!(e.contains("unknown backend `tpu`"), "{e}");
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("`x` is not a device index"), "{e}");
        if !cfg!(feature = "cuda") {
            let e = parse_device("cuda:1").unwrap_err().to_string();
            assert!(e.contains("no `cuda` backend"), "{e}");
        }
    }

    #[test]
    fn parses_a_list() {
        if cfg!(feature = "flex") {
            assert_eq!(parse_devices("flex, flex").unwrap().len(), 2);
            assert!(parse_device("flex:1").is_err());
        }
    }
}
