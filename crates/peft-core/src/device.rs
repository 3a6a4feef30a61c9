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

/// The devices an op's tests run on: the suite's (`Device::default()`, which `BURN_DEVICE`
/// picks), and ndarray too where the build has it, so that a backend extension's routing to
/// each backend's implementation is exercised.
#[cfg(test)]
pub(crate) fn suite_devices() -> Vec<Device> {
    let mut devices = vec![Device::default()];
    if let Ok(ndarray) = parse_device("ndarray")
        && ndarray != devices[0]
    {
        devices.push(ndarray);
    }
    devices
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

    /// `len` deterministic test values spread over `[-shift, 1013 / scale - shift)`.
    #[cfg(feature = "flex")]
    fn pattern(len: usize, seed: usize, scale: f32, shift: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed) % 1013) as f32 / scale - shift)
            .collect()
    }

    /// The project builds a patched burn-flex (`third_party/burn-flex`): large element-wise ops
    /// split across threads, broadcast ones included, op outputs allocated without a copy, and a
    /// vectorised exp.
    /// Above the split threshold (2¹⁵ elements) each result must equal the scalar computation.
    #[cfg(feature = "flex")]
    #[test]
    fn flex_element_wise_ops_above_the_split_threshold_equal_the_scalar_reference() {
        use burn::tensor::{Tensor, TensorData};
        let device = Device::flex();
        let [b, h, s, t] = [2usize, 6, 64, 96];
        let n = b * h * s * t;
        let values = |len: usize, seed: usize| pattern(len, seed, 97.0, 5.0);
        let x_host = values(n, 1);
        let x = Tensor::<4>::from_data(TensorData::new(x_host.clone(), [b, h, s, t]), &device);
        let host = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        // Broadcast over the two leading dims (an attention mask), both operand orders.
        let mask_host = values(s * t, 2);
        let mask =
            Tensor::<4>::from_data(TensorData::new(mask_host.clone(), [1, 1, s, t]), &device);
        let want: Vec<f32> = (0..n).map(|i| x_host[i] + mask_host[i % (s * t)]).collect();
        assert_eq!(host(x.clone() + mask.clone()), want);
        let want: Vec<f32> = (0..n).map(|i| mask_host[i % (s * t)] - x_host[i]).collect();
        assert_eq!(host(mask.clone() - x.clone()), want);
        // Broadcast along the last dim (a per-row statistic), into a uniquely owned operand.
        let row_host = values(b * h * s, 3);
        let row = Tensor::<4>::from_data(TensorData::new(row_host.clone(), [b, h, s, 1]), &device);
        let want: Vec<f32> = (0..n).map(|i| x_host[i] * row_host[i / t]).collect();
        assert_eq!(host(x.clone().mul_scalar(1.0) * row), want);
        // A transposed view against a broadcast row.
        let transposed = x.clone().swap_dims(2, 3);
        let col_host = values(s, 4);
        let col = Tensor::<4>::from_data(TensorData::new(col_host.clone(), [1, 1, 1, s]), &device);
        let mut want = vec![0f32; n];
        for bh in 0..b * h {
            for j in 0..t {
                for i in 0..s {
                    want[(bh * t + j) * s + i] = x_host[(bh * s + i) * t + j] / col_host[i];
                }
            }
        }
        assert_eq!(host(transposed / col), want);
        // A scalar op on a strided view (heads split by `swap_dims`): copied, then in place.
        let mut want = vec![0f32; n];
        for bh in 0..b * h {
            for j in 0..t {
                for i in 0..s {
                    want[(bh * t + j) * s + i] = x_host[(bh * s + i) * t + j] * 0.125;
                }
            }
        }
        assert_eq!(host(x.clone().swap_dims(2, 3).mul_scalar(0.125)), want);
        // ReLU's backward (an op without a SIMD kernel, in place into the kept output).
        let leaf = Tensor::<4>::from_data(
            TensorData::new(x_host.clone(), [b, h, s, t]),
            &device.clone().autodiff(),
        )
        .require_grad();
        let upstream = values(n, 5);
        let up = Tensor::<4>::from_data(TensorData::new(upstream.clone(), [b, h, s, t]), &device);
        let grads = (burn::tensor::activation::relu(leaf.clone()) * up)
            .sum()
            .backward();
        let want: Vec<f32> = (0..n)
            .map(|i| if x_host[i] > 0.0 { upstream[i] } else { 0.0 })
            .collect();
        assert_eq!(host(leaf.grad(&grads).unwrap()), want);
        // Same-shape and scalar paths, then exp (vectorised: within 2 ulp of libm's).
        let sum: Vec<f32> = x_host.iter().map(|v| v * 0.5 + v).collect();
        let y = x.clone().mul_scalar(0.5) + x;
        assert_eq!(host(y.clone()), sum);
        for (got, v) in host(y.exp()).into_iter().zip(sum) {
            let want = v.exp();
            assert!(
                (got - want).abs() <= 2.5e-7 * want,
                "exp({v}) = {got}, libm {want}"
            );
        }
    }

    /// The vendored gemm-common (third_party/gemm-common/PATCHES.md) packs a transposed
    /// left-hand side of its inner problem (here: the right-hand side `Wᵀ` of a Linear layer's
    /// input gradient, `g · Wᵀ`) on every thread and 16 × 16 at a time in AVX-512 registers.
    /// Packing only moves values, so each product must equal, bit for bit, the one gemm
    /// computes from a contiguous copy of `Wᵀ` (which never takes those paths), and that one
    /// must be the product within rounding.
    #[cfg(feature = "flex")]
    #[test]
    fn flex_products_with_a_transposed_operand_equal_those_of_its_contiguous_copy() {
        use burn::tensor::{Tensor, TensorData};
        let device = Device::flex();
        let values = |len: usize, seed: usize| pattern(len, seed, 503.0, 1.0);
        // [rows, depth] · [cols, depth]ᵀ: gemm's inner problem has `cols` rows, prepacked whole
        // when `cols` ≤ 2·mc, packed per block by each thread when larger (3072). With AVX2's
        // panels of 16 rows mc is at most 128; with AVX-512's, at 1024 depths, 512 on the Xeon
        // VM and 256 on 1 MiB of L2 (the Zen 5 VM), and 384 at 515 depths on both. So 200 (with
        // 515 depths: a tail past the last 8 and 16, and a partial panel) is prepacked on every
        // CPU, 333 and 512 on both AVX-512 VMs, 768 on the Xeon. Elsewhere the shapes may take
        // other paths, and must still agree. Full panels are packed in AVX-512 or AVX
        // registers, whichever the CPU has.
        for (rows, depth, cols) in [
            (257, 515, 200),
            (1024, 1024, 512),
            (1024, 1024, 768),
            (257, 515, 333),
            (512, 768, 3072),
        ] {
            let x_host = values(rows * depth, 1);
            let w_host = values(cols * depth, 2);
            let x = Tensor::<2>::from_data(TensorData::new(x_host.clone(), [rows, depth]), &device);
            let w = Tensor::<2>::from_data(TensorData::new(w_host.clone(), [cols, depth]), &device);
            let mut wt_host = vec![0f32; depth * cols];
            for c in 0..cols {
                for d in 0..depth {
                    wt_host[d * cols + c] = w_host[c * depth + d];
                }
            }
            let wt = Tensor::<2>::from_data(TensorData::new(wt_host, [depth, cols]), &device);
            let got = x.clone().matmul(w.transpose()).into_data();
            let got = got.try_to_vec::<f32>().unwrap();
            let want = x.matmul(wt).into_data().try_to_vec::<f32>().unwrap();
            assert!(
                got == want,
                "[{rows}, {depth}] · [{cols}, {depth}]ᵀ differs from the product with a contiguous copy"
            );
            for (i, j) in [
                (0, 0),
                (rows - 1, cols - 1),
                (rows / 2, cols / 3),
                (7, cols - 5),
            ] {
                let exact: f64 = (0..depth)
                    .map(|d| f64::from(x_host[i * depth + d]) * f64::from(w_host[j * depth + d]))
                    .sum();
                let tol = 1e-5 * depth as f64;
                assert!(
                    (f64::from(got[i * cols + j]) - exact).abs() <= tol,
                    "[{rows}, {depth}] · [{cols}, {depth}]ᵀ at ({i}, {j}): {} against {exact}",
                    got[i * cols + j]
                );
            }
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
