//! Tables, charts and the guide's Markdown from measured rows.

use std::fmt::Write as _;
use std::path::Path;

use peft_benches::Spread;
use serde_json::Value;

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn thousands(n: u64) -> String {
    peft_core::params::group(n as usize)
}

fn mib(b: f64) -> String {
    if b.is_nan() {
        return "—".into();
    }
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1e3)
}

fn row<'a>(rows: &'a [Value], key: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r["key"] == key && r.get("skipped").is_none())
}

/// Rows `k1` and `k2` as measured in the same rounds: a row measured in a later group than the
/// first carries its group's frozen base and LoRA q,v under `same_rounds` (see the guide's
/// `run_model`), which stand in for the table's rows of those keys.
fn same_rounds<'a>(rows: &'a [Value], k1: &str, k2: &str) -> Option<(&'a Value, &'a Value)> {
    let (a, b) = (row(rows, k1)?, row(rows, k2)?);
    Some(if let Some(x) = a["same_rounds"].get(k2) {
        (a, x)
    } else if let Some(x) = b["same_rounds"].get(k1) {
        (x, b)
    } else {
        (a, b)
    })
}

/// The samples of `field` in a row (one per round), or its single figure in results written
/// before the guide kept samples.
fn samples(r: &Value, field: &str) -> Vec<f64> {
    match r["samples"][field].as_array() {
        Some(v) if !v.is_empty() => v.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect(),
        _ => vec![f(r, field)],
    }
}

/// `a.fa / b.fb` round by round (both measured in the same rounds), as a median with its
/// min–max; the ratio of the medians when either side has one figure only.
fn paired(a: &Value, fa: &str, b: &Value, fb: &str) -> Spread {
    let (x, y) = (samples(a, fa), samples(b, fb));
    if x.len() == y.len() {
        Spread::of_ratios(&x, &y)
    } else {
        Spread::single(Spread::of(&x).median / Spread::of(&y).median)
    }
}

/// `4.72 s (4.65–4.80)`-style: a time with its spread.
fn ms_spread(r: &Value, field: &str) -> String {
    ms_spread_to(r, field, 1, 0)
}

/// [`ms_spread`] with the median to `median_dp` decimals of a millisecond and the min–max to
/// `range_dp`.
fn ms_spread_to(r: &Value, field: &str, median_dp: usize, range_dp: usize) -> String {
    let s = Spread::of(&samples(r, field));
    let median = format!("{:.median_dp$} ms", s.median * 1e3);
    if s.min == s.max {
        median
    } else {
        format!(
            "{median} ({:.range_dp$}–{:.range_dp$})",
            s.min * 1e3,
            s.max * 1e3
        )
    }
}

/// A ratio with its spread: `1.23× (1.20–1.31)`.
fn ratio_spread(s: Spread) -> String {
    if s.median.is_nan() {
        "—".into()
    } else if s.min == s.max {
        format!("{:.2}×", s.median)
    } else {
        format!("{:.2}× ({:.2}–{:.2})", s.median, s.min, s.max)
    }
}

/// A target's ratio: `1.02 (0.97–1.08)` when the interval of the median is the min–max,
/// `1.02 (0.97–1.05; 0.91–1.12)` when the rounds were enough to leave out the extremes (and
/// the two read differently at two decimals).
fn median_interval(s: Spread) -> String {
    let interval = format!("{:.2}–{:.2}", s.lo, s.hi);
    let range = format!("{:.2}–{:.2}", s.min, s.max);
    if s.median.is_nan() || s.min == s.max || interval == range {
        ratio_spread(s).replace('×', "")
    } else {
        format!("{:.2} ({interval}; {range})", s.median)
    }
}

/// The measured table of one model (Markdown), step ratios against the frozen base and LoRA q,v
/// taken round by round.
pub fn table(rows: &[Value]) -> String {
    let vs = |r: &Value, other: &str| {
        let key = r["key"].as_str().unwrap_or("?");
        same_rounds(rows, key, other).map_or("—".into(), |(a, b)| {
            ratio_spread(paired(a, "step_s", b, "step_s"))
        })
    };
    let mut t = String::from(
        "| method | trainable params | % | adapter file | train step, median (min–max ms) | tokens/s | step / frozen base | step / LoRA q,v | peak heap in step (growth over pre-step heap) | step peak RSS growth | prompt unmerged → merged | 1 token unmerged → merged |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let mut method = r["method"].as_str().unwrap_or("?").to_string();
        if let Some(g) = r["group"].as_u64() {
            let _ = write!(method, " (group {g})");
        }
        if let Some(why) = r["skipped"].as_str() {
            let _ = writeln!(t, "| {method} | skipped: {why} |||||||||||");
            continue;
        }
        let _ = writeln!(
            t,
            "| {method} | {} | {:.3} | {} | {} | {:.0} | {} | {} | {} ({}) | {} | {} → {} | {} → {} |",
            thousands(r["trainable_params"].as_u64().unwrap_or(0)),
            f(r, "trainable_percent"),
            mib(f(r, "file_bytes")),
            ms_spread(r, "step_s"),
            f(r, "tokens_per_s"),
            vs(r, "frozen"),
            vs(r, "lora-qv"),
            mib(f(r, "peak_heap_bytes")),
            mib(f(r, "peak_step_bytes")),
            mib(f(r, "peak_rss_growth_bytes")),
            ms(f(r, "prompt_unmerged_s")),
            ms(f(r, "prompt_merged_s")),
            ms(f(r, "token_unmerged_s")),
            ms(f(r, "token_merged_s")),
        );
    }
    t
}

/// The `--vs-pytorch` table of one model: PyTorch's figures and ours / PyTorch, round by round.
pub fn pytorch_table(rows: &[Value]) -> String {
    let mut t = String::from(
        "| method | PyTorch step, median (min–max ms) | step, ours / PyTorch | step peak RSS growth, PyTorch | ours / PyTorch | PyTorch prompt unmerged → merged | prompt merged, ours / PyTorch | PyTorch 1 token unmerged → merged | 1 token merged, ours / PyTorch | 1 token unmerged, ours / PyTorch |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let method = r["method"].as_str().unwrap_or("?");
        let p = &r["pytorch"];
        if let Some(why) = r["skipped"].as_str().or(p["skipped"].as_str()) {
            let _ = writeln!(t, "| {method} | skipped: {why} |||||||||");
            continue;
        }
        if p.is_null() {
            continue;
        }
        let _ = writeln!(
            t,
            "| {method} | {} | {} | {} | {:.2}× | {} → {} | {} | {} → {} | {} | {} |",
            ms_spread(p, "step_s"),
            ratio_spread(paired(r, "step_s", p, "step_s")),
            mib(f(p, "peak_rss_growth_bytes")),
            f(r, "peak_rss_growth_bytes") / f(p, "peak_rss_growth_bytes"),
            ms(f(p, "prompt_unmerged_s")),
            ms(f(p, "prompt_merged_s")),
            ratio_spread(paired(r, "prompt_merged_s", p, "prompt_merged_s")),
            ms(f(p, "token_unmerged_s")),
            ms(f(p, "token_merged_s")),
            ratio_spread(paired(r, "token_merged_s", p, "token_merged_s")),
            ratio_spread(paired(r, "token_unmerged_s", p, "token_unmerged_s")),
        );
    }
    t
}

/// The products alone (`results.json`'s `products` of one model): each side's median with its
/// min–max, its rate in GFLOP/s (`2·m·k·n` over the median) and ours / PyTorch round by round.
/// An input gradient (`"input_gradient": true`) shows its shape as `[m, n]·[n, k]`.
pub fn products_table(products: &[Value]) -> String {
    let header = if products.iter().any(|p| p["input_gradient"] == true) {
        "| product | ours (`gemm` through burn-flex), median (min–max ms) | GFLOP/s | PyTorch (`F.linear`; an input gradient through `matmul` with its `[out, in]` weight), median (min–max ms) | GFLOP/s | ours / PyTorch |\n|---|---:|---:|---:|---:|---:|\n"
    } else {
        // As runs before the input gradient was timed rendered it.
        "| product `[m, k]·[k, n]` | ours (`gemm` through burn-flex), median (min–max ms) | GFLOP/s | PyTorch `F.linear`, median (min–max ms) | GFLOP/s | ours / PyTorch |\n|---|---:|---:|---:|---:|---:|\n"
    };
    let mut t = String::from(header);
    for p in products {
        let flop = 2.0 * f(p, "m") * f(p, "k") * f(p, "n");
        let rate = |side: &Value| {
            let s = f(side, "s");
            if s.is_nan() {
                "—".to_string()
            } else {
                format!("{:.0}", flop / s / 1e9)
            }
        };
        let torch = &p["pytorch"];
        // A product takes milliseconds: its spread to a hundredth of one.
        let time = |side: &Value| ms_spread_to(side, "s", 2, 2);
        let (torch_time, ratio) = if torch.is_null() {
            ("—".to_string(), "—".to_string())
        } else {
            (time(torch), ratio_spread(paired(p, "s", torch, "s")))
        };
        let (inner, outer) = if p["input_gradient"] == true {
            (&p["n"], &p["k"])
        } else {
            (&p["k"], &p["n"])
        };
        let _ = writeln!(
            t,
            "| {} `[{}, {inner}]·[{inner}, {outer}]` | {} | {} | {torch_time} | {} | {ratio} |",
            p["what"].as_str().unwrap_or("?"),
            p["m"],
            time(p),
            rate(p),
            rate(torch),
        );
    }
    t
}

/// PyTorch's side as its worker reported it (the first row with versions): `torch 2.15.0,
/// BLAS Intel(R) oneAPI Math Kernel Library Version 2024.2-…, CPU capability AVX512, 2
/// threads`, then `, LD_PRELOAD …` where the worker ran with one (a library that changes which
/// kernels MKL takes: benches/probes/mkl-avx512); `None` without a PyTorch row or in results
/// written before the worker said so.
pub fn pytorch_versions(models: &serde_json::Map<String, Value>) -> Option<String> {
    let v = models
        .values()
        .filter_map(|m| m["rows"].as_array())
        .flatten()
        .map(|r| &r["pytorch"]["versions"])
        .find(|v| v.get("blas").is_some())?;
    let text = |k: &str| v[k].as_str().unwrap_or("?").to_string();
    let preload = v["preload"]
        .as_str()
        .map(|p| format!(", LD_PRELOAD {p}"))
        .unwrap_or_default();
    Some(format!(
        "torch {}, BLAS {}, CPU capability {}, {} threads{preload}",
        text("torch"),
        text("blas"),
        text("cpu_capability"),
        v["threads"]
    ))
}

/// Which way a target points.
#[derive(Clone, Copy)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
    Below(f64),
}

/// A target: what it says, the measured ratio with its spread, and its bound.
struct Check {
    what: String,
    measured: Spread,
    bound: Bound,
}

impl Check {
    /// `met` when the interval of the median ratio (`lo`–`hi`, the min–max for seven rounds or
    /// fewer) is on the right side of the bound, `missed` when it is on the wrong side,
    /// `within noise` otherwise.
    fn verdict(&self) -> &'static str {
        let Spread { median, lo, hi, .. } = self.measured;
        if median.is_nan() {
            return "not measured";
        }
        let (all_ok, none_ok) = match self.bound {
            Bound::AtMost(b) => (hi <= b, lo > b),
            Bound::AtLeast(b) => (lo >= b, hi < b),
            Bound::Below(b) => (hi < b, lo >= b),
        };
        if all_ok {
            "met"
        } else if none_ok {
            "missed"
        } else {
            "within noise"
        }
    }
}

/// The targets checked against one model's rows (Markdown table): each ratio taken round by
/// round, judged from the interval of its median.
pub fn targets(rows: &[Value]) -> String {
    let nan = Spread::single(f64::NAN);
    let ratio = |k1: &str, f1: &str, k2: &str, f2: &str| {
        same_rounds(rows, k1, k2).map_or(nan, |(a, b)| paired(a, f1, b, f2))
    };
    let vs_torch = |key: &str, field: &str| {
        row(rows, key)
            .filter(|r| r["pytorch"].get("skipped").is_none() && !r["pytorch"].is_null())
            .map_or(nan, |r| paired(r, field, &r["pytorch"], field))
    };
    let check = |what: &str, measured: Spread, bound: Bound| Check {
        what: what.to_string(),
        measured,
        bound,
    };
    let mut checks = vec![
        check(
            "LoRA q,v step / frozen-base step ≤ 1.10",
            ratio("lora-qv", "step_s", "frozen", "step_s"),
            Bound::AtMost(1.10),
        ),
        check(
            "burn apply_lora step / LoRA q,v step ≥ 1.30",
            ratio("burn-lora", "step_s", "lora-qv", "step_s"),
            Bound::AtLeast(1.30),
        ),
        check(
            "merged LoRA prompt / base prompt ≤ 1.02",
            ratio("lora-qv", "prompt_merged_s", "frozen", "prompt_merged_s"),
            Bound::AtMost(1.02),
        ),
        check(
            "merged LoRA 1 token / base 1 token ≤ 1.02",
            ratio("lora-qv", "token_merged_s", "frozen", "token_merged_s"),
            Bound::AtMost(1.02),
        ),
        check(
            "unmerged / merged LoRA 1 token ≤ 1.10",
            ratio("lora-qv", "token_unmerged_s", "lora-qv", "token_merged_s"),
            Bound::AtMost(1.10),
        ),
        check(
            "unmerged LoRA 1 token / burn apply_lora unmerged 1 token ≤ 1.0",
            ratio(
                "lora-qv",
                "token_unmerged_s",
                "burn-lora",
                "token_unmerged_s",
            ),
            Bound::AtMost(1.0),
        ),
        check(
            "unmerged LoRA prompt / burn apply_lora unmerged prompt ≤ 1.0",
            ratio(
                "lora-qv",
                "prompt_unmerged_s",
                "burn-lora",
                "prompt_unmerged_s",
            ),
            Bound::AtMost(1.0),
        ),
        check(
            "LoRA-FA peak step heap / LoRA's < 1",
            ratio("lorafa-qv", "peak_heap_bytes", "lora-qv", "peak_heap_bytes"),
            Bound::Below(1.0),
        ),
        check(
            "Bone default step / LoRA q,v step ≤ 1.10",
            ratio("bone", "step_s", "lora-qv", "step_s"),
            Bound::AtMost(1.10),
        ),
        check(
            "LoRA q,v step, ours / PyTorch ≤ 1.0",
            vs_torch("lora-qv", "step_s"),
            Bound::AtMost(1.0),
        ),
        check(
            "LoRA q,v step peak RSS growth, ours / PyTorch ≤ 1.0",
            vs_torch("lora-qv", "peak_rss_growth_bytes"),
            Bound::AtMost(1.0),
        ),
        check(
            "merged prompt (base model), ours / PyTorch ≤ 1.0",
            vs_torch("frozen", "prompt_merged_s"),
            Bound::AtMost(1.0),
        ),
        check(
            "merged 1 token (base model), ours / PyTorch ≤ 1.0",
            vs_torch("frozen", "token_merged_s"),
            Bound::AtMost(1.0),
        ),
    ];
    for r in rows.iter().filter(|r| r.get("skipped").is_none()) {
        let key = r["key"].as_str().unwrap_or("?");
        if key != "lora-qv" && r["pytorch"]["step_s"].is_number() {
            checks.push(check(
                &format!(
                    "{} step, ours / PyTorch ≤ 1.2",
                    r["method"].as_str().unwrap_or(key)
                ),
                vs_torch(key, "step_s"),
                Bound::AtMost(1.2),
            ));
        }
    }
    let mut t = String::from(
        "| target | measured, median (interval of the median; min–max over rounds) | verdict |\n|---|---:|:---:|\n",
    );
    for c in checks {
        let _ = writeln!(
            t,
            "| {} | {} | {} |",
            c.what,
            median_interval(c.measured),
            c.verdict()
        );
    }
    t
}

/// A method page's measured section: the rows `keys` of every model in `data`.
pub fn method_section(header: &str, data: &Value, keys: &[&str], torch: bool) -> String {
    let mut s = String::from(header);
    if let Some(models) = data.as_object() {
        for (name, model) in models {
            let all = model["rows"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Value> = all
                .iter()
                .filter(|r| keys.iter().any(|k| r["key"] == *k))
                .cloned()
                .collect();
            if rows.is_empty() {
                continue;
            }
            let st = &model["settings"];
            let _ = write!(
                s,
                "#### OPT-{name} (batch {} × seq {})\n\n{}\n",
                st["batch"],
                st["seq"],
                table(&rows)
            );
            if torch {
                let _ = write!(
                    s,
                    "Against HF PEFT on PyTorch:\n\n{}\n",
                    pytorch_table(&rows)
                );
            }
        }
    }
    s
}

/// A horizontal bar chart (SVG) of `key` per row, scaled by `scale` and labelled with `unit`.
pub fn bar_chart(title: &str, rows: &[Value], key: &str, scale: f64, unit: &str) -> String {
    let (w, bar_h, left) = (760.0, 26.0, 230.0);
    let h = 50.0 + bar_h * rows.len() as f64;
    let rows: Vec<&Value> = rows.iter().filter(|r| r.get("skipped").is_none()).collect();
    let max = rows
        .iter()
        .map(|r| f(r, key) * scale)
        .fold(0.0, f64::max)
        .max(1e-12);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{title}</text>\n"
    );
    for (i, r) in rows.iter().enumerate() {
        let y = 36.0 + i as f64 * bar_h;
        let v = f(r, key) * scale;
        let len = (w - left - 120.0) * v / max;
        let _ = write!(
            s,
            "<text x=\"{x}\" y=\"{ty}\" text-anchor=\"end\">{label}</text>\n<rect x=\"{left}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bh}\" fill=\"#4878a8\"/>\n<text x=\"{vx:.1}\" y=\"{ty}\">{v:.1} {unit}</text>\n",
            x = left - 8.0,
            ty = y + 15.0,
            label = r["method"].as_str().unwrap_or("?"),
            bh = bar_h - 6.0,
            vx = left + len + 6.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Replaces the text between `<!-- {marker}:start -->` and `<!-- {marker}:end -->` in `doc`
/// (appending the markers when absent).
pub fn splice(doc: &str, marker: &str, generated: &str) -> String {
    let start = format!("<!-- {marker}:start -->");
    let end = format!("<!-- {marker}:end -->");
    let block = format!("{start}\n{generated}\n{end}");
    match (doc.find(&start), doc.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &doc[..a], &doc[b + end.len()..]),
        _ => format!("{}\n\n{block}\n", doc.trim_end()),
    }
}

/// [`splice`] on a file (created when missing); a failure to write ends the run.
pub fn splice_file(path: &Path, marker: &str, generated: &str) {
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    if let Err(e) = std::fs::write(path, splice(&doc, marker, generated)) {
        eprintln!("guide: cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn products_show_both_sides_rates_and_their_ratio_round_by_round() {
        let p = json!({
            "what": "fc1", "m": 1000, "k": 500, "n": 1000, "s": 0.01,
            "samples": {"s": [0.01, 0.012, 0.009]},
            "pytorch": {"s": 0.02, "samples": {"s": [0.02, 0.02, 0.03]}},
        });
        let t = products_table(&[p]);
        // 2·1000·500·1000 = 1 GFLOP: 100 GFLOP/s at 10 ms, 50 at 20 ms; ratios 0.5, 0.6, 0.3.
        assert!(
            t.contains("| fc1 `[1000, 500]·[500, 1000]` | 10.00 ms (9.00–12.00) | 100 | 20.00 ms (20.00–30.00) | 50 | 0.50× (0.30–0.60) |"),
            "{t}"
        );
        assert!(t.starts_with("| product `[m, k]·[k, n]` |"), "{t}");
        // An input gradient `[m, n]·[n, k]`; the header then names both of PyTorch's calls.
        let grad =
            json!({"what": "dX", "m": 10, "k": 20, "n": 30, "s": 0.01, "input_gradient": true});
        let t = products_table(&[grad]);
        assert!(
            t.contains("| dX `[10, 30]·[30, 20]` | 10.00 ms | 0 | — |"),
            "{t}"
        );
        assert!(t.contains("an input gradient through `matmul`"), "{t}");
        let ours_only =
            products_table(&[json!({"what": "fc1", "m": 1000, "k": 500, "n": 1000, "s": 0.01})]);
        assert!(
            ours_only.contains("| 10.00 ms | 100 | — | — | — |"),
            "{ours_only}"
        );
    }

    #[test]
    fn pytorch_versions_come_from_the_first_row_that_has_them() {
        let models = json!({
            "125m": {"rows": [
                {"key": "burn-lora", "pytorch": {"skipped": "no counterpart"}},
                {"key": "frozen", "pytorch": {"versions": {"torch": "2.15.0", "blas": "MKL", "cpu_capability": "AVX512", "threads": 2}}},
            ]},
        });
        assert_eq!(
            pytorch_versions(models.as_object().unwrap()).as_deref(),
            Some("torch 2.15.0, BLAS MKL, CPU capability AVX512, 2 threads")
        );
        // A worker run with a library preloaded says so.
        let preloaded = json!({"125m": {"rows": [{"pytorch": {"versions": {"torch": "2.15.0", "blas": "MKL", "cpu_capability": "AVX512", "threads": 2, "preload": "/tmp/libintel_cpu.so"}}}]}});
        assert_eq!(
            pytorch_versions(preloaded.as_object().unwrap()).as_deref(),
            Some(
                "torch 2.15.0, BLAS MKL, CPU capability AVX512, 2 threads, LD_PRELOAD /tmp/libintel_cpu.so"
            )
        );
        // Results written before the worker reported its BLAS: nothing.
        let old = json!({"125m": {"rows": [{"pytorch": {"versions": {"torch": "2.15.0"}}}]}});
        assert_eq!(pytorch_versions(old.as_object().unwrap()), None);
    }

    #[test]
    fn splice_replaces_between_markers_and_appends_when_absent() {
        let doc = "a\n<!-- guide:start -->\nold\n<!-- guide:end -->\nb\n";
        assert_eq!(
            splice(doc, "guide", "new"),
            "a\n<!-- guide:start -->\nnew\n<!-- guide:end -->\nb\n"
        );
        assert_eq!(
            splice("text\n", "guide", "x"),
            "text\n\n<!-- guide:start -->\nx\n<!-- guide:end -->\n"
        );
    }

    #[test]
    fn targets_compare_rows_and_skip_missing_ones() {
        let rows = vec![
            json!({"key": "frozen", "step_s": 1.0}),
            json!({"key": "lora-qv", "step_s": 1.2, "peak_heap_bytes": 10.0}),
            json!({"key": "lorafa-qv", "peak_heap_bytes": 9.0}),
            json!({"key": "full", "skipped": "too big"}),
        ];
        let t = targets(&rows);
        assert!(
            t.contains("| LoRA q,v step / frozen-base step ≤ 1.10 | 1.20 | missed |"),
            "{t}"
        );
        assert!(
            t.contains("| LoRA-FA peak step heap / LoRA's < 1 | 0.90 | met |"),
            "{t}"
        );
        assert!(
            t.contains("| Bone default step / LoRA q,v step ≤ 1.10 | — | not measured |"),
            "{t}"
        );
        let table = table(&rows);
        assert!(table.contains("| ? | skipped: too big |"), "{table}");
        assert!(table.contains("| 1.20× | 1.00× |"), "{table}");
    }

    #[test]
    fn targets_judge_round_by_round_ratios_by_their_spread() {
        let rows = vec![
            json!({"key": "frozen", "samples": {"step_s": [1.0, 1.0, 1.0]}}),
            // 1.05, 1.15, 1.08 against the frozen base: the bound 1.10 is inside the spread.
            json!({"key": "lora-qv", "samples": {"step_s": [1.05, 1.15, 1.08]},
                   "pytorch": {"samples": {"step_s": [1.25, 1.25, 1.25]}}}),
            // 0.8–0.9 of LoRA's step in every round.
            json!({"key": "bone", "samples": {"step_s": [0.9, 0.92, 0.9]}}),
        ];
        let t = targets(&rows);
        assert!(
            t.contains(
                "| LoRA q,v step / frozen-base step ≤ 1.10 | 1.08 (1.05–1.15) | within noise |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| LoRA q,v step, ours / PyTorch ≤ 1.0 | 0.86 (0.84–0.92) | met |"),
            "{t}"
        );
        assert!(
            t.contains("| Bone default step / LoRA q,v step ≤ 1.10 | 0.83 (0.80–0.86) | met |"),
            "{t}"
        );
    }

    #[test]
    fn with_nine_rounds_a_target_is_judged_by_the_interval_of_its_median() {
        // Ratios 0.85–0.98 in seven rounds and two outliers (0.80, 1.20): the min–max straddles
        // 1.0, the interval of the median (2nd to 8th of nine, 96 %) does not.
        let ours = [0.85, 0.90, 0.95, 0.80, 0.97, 0.92, 1.20, 0.98, 0.93];
        let torch = [1.0; 9];
        let rows = vec![
            json!({"key": "frozen", "samples": {"step_s": ours}}),
            json!({"key": "lora-qv", "samples": {"step_s": ours},
                   "pytorch": {"samples": {"step_s": torch}}}),
        ];
        let t = targets(&rows);
        assert!(
            t.contains(
                "| LoRA q,v step, ours / PyTorch ≤ 1.0 | 0.93 (0.85–0.98; 0.80–1.20) | met |"
            ),
            "{t}"
        );
        // The same nine ratios around 1.0 instead: within noise.
        let shifted: Vec<f64> = ours.iter().map(|r| r + 0.05).collect();
        let rows = vec![json!({"key": "lora-qv", "samples": {"step_s": shifted},
                               "pytorch": {"samples": {"step_s": torch}}})];
        let t = targets(&rows);
        assert!(
            t.contains(
                "| LoRA q,v step, ours / PyTorch ≤ 1.0 | 0.98 (0.90–1.03; 0.85–1.25) | within noise |"
            ),
            "{t}"
        );
    }

    #[test]
    fn a_row_of_a_later_group_is_compared_with_the_rows_of_its_own_rounds() {
        let rows = vec![
            json!({"key": "frozen", "samples": {"step_s": [1.0, 1.0, 1.0]}}),
            json!({"key": "lora-qv", "samples": {"step_s": [1.1, 1.1, 1.1],
                   "prompt_unmerged_s": [1.0, 1.0, 1.0]}}),
            // Measured in a slower group: 1.1–1.2 of that group's LoRA q,v.
            json!({"key": "bone", "samples": {"step_s": [2.2, 2.4, 2.2]}, "group": 2,
                   "same_rounds": {
                       "frozen": {"key": "frozen", "samples": {"step_s": [2.0, 2.0, 2.0]}},
                       "lora-qv": {"key": "lora-qv", "samples": {"step_s": [2.0, 2.0, 2.0],
                                   "prompt_unmerged_s": [2.0, 2.0, 2.0]}}}}),
            json!({"key": "burn-lora", "samples": {"prompt_unmerged_s": [2.5, 2.5, 2.5]},
                   "same_rounds": {
                       "lora-qv": {"key": "lora-qv", "samples": {"prompt_unmerged_s": [2.0, 2.0, 2.0]}}}}),
        ];
        let t = targets(&rows);
        assert!(
            t.contains(
                "| Bone default step / LoRA q,v step ≤ 1.10 | 1.10 (1.10–1.20) | within noise |"
            ),
            "{t}"
        );
        // LoRA q,v's row is the first group's; burn's row brings its own group's LoRA q,v.
        assert!(
            t.contains(
                "| unmerged LoRA prompt / burn apply_lora unmerged prompt ≤ 1.0 | 0.80 | met |"
            ),
            "{t}"
        );
        let table = table(&rows);
        assert!(
            table.contains("| 1.10× (1.10–1.20) | 1.10× (1.10–1.20) |"),
            "{table}"
        );
    }
}
