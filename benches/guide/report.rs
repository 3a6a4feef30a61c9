//! Tables, charts and the guide's Markdown from measured rows.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn thousands(n: u64) -> String {
    peft_core::params::group(n as usize)
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1e3)
}

fn row<'a>(rows: &'a [Value], key: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r["key"] == key && r.get("skipped").is_none())
}

/// The measured table of one model (Markdown), step ratios against the frozen base and LoRA q,v.
pub fn table(rows: &[Value]) -> String {
    let step_of = |key| row(rows, key).map_or(f64::NAN, |r| f(r, "step_s"));
    let (frozen, lora) = (step_of("frozen"), step_of("lora-qv"));
    let mut t = String::from(
        "| method | trainable params | % | adapter file | train step | tokens/s | step / frozen base | step / LoRA q,v | peak heap in step (growth over pre-step heap) | prompt unmerged → merged | 1 token unmerged → merged |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let method = r["method"].as_str().unwrap_or("?");
        if let Some(why) = r["skipped"].as_str() {
            let _ = writeln!(t, "| {method} | skipped: {why} ||||||||||");
            continue;
        }
        let _ = writeln!(
            t,
            "| {method} | {} | {:.3} | {} | {} | {:.0} | {:.2}× | {:.2}× | {} ({}) | {} → {} | {} → {} |",
            thousands(r["trainable_params"].as_u64().unwrap_or(0)),
            f(r, "trainable_percent"),
            mib(f(r, "file_bytes")),
            ms(f(r, "step_s")),
            f(r, "tokens_per_s"),
            f(r, "step_s") / frozen,
            f(r, "step_s") / lora,
            mib(f(r, "peak_heap_bytes")),
            mib(f(r, "peak_step_bytes")),
            ms(f(r, "prompt_unmerged_s")),
            ms(f(r, "prompt_merged_s")),
            ms(f(r, "token_unmerged_s")),
            ms(f(r, "token_merged_s")),
        );
    }
    t
}

/// The `--vs-pytorch` table of one model: PyTorch's figures and ours / PyTorch.
pub fn pytorch_table(rows: &[Value]) -> String {
    let mut t = String::from(
        "| method | PyTorch step | ours / PyTorch | PyTorch peak RSS growth | PyTorch prompt unmerged → merged | ours / PyTorch (merged) | PyTorch 1 token unmerged → merged | ours / PyTorch (unmerged) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let method = r["method"].as_str().unwrap_or("?");
        let p = &r["pytorch"];
        if let Some(why) = r["skipped"].as_str().or(p["skipped"].as_str()) {
            let _ = writeln!(t, "| {method} | skipped: {why} |||||||");
            continue;
        }
        if p.is_null() {
            continue;
        }
        let _ = writeln!(
            t,
            "| {method} | {} | {:.2}× | {} | {} → {} | {:.2}× | {} → {} | {:.2}× |",
            ms(f(p, "step_s")),
            f(r, "step_s") / f(p, "step_s"),
            mib(f(p, "peak_rss_growth_bytes")),
            ms(f(p, "prompt_unmerged_s")),
            ms(f(p, "prompt_merged_s")),
            f(r, "prompt_merged_s") / f(p, "prompt_merged_s"),
            ms(f(p, "token_unmerged_s")),
            ms(f(p, "token_merged_s")),
            f(r, "token_unmerged_s") / f(p, "token_unmerged_s"),
        );
    }
    t
}

/// A target: what it says, the measured ratio, and whether the ratio meets it.
type Check = (&'static str, f64, fn(f64) -> bool);

/// The targets checked against one model's rows (Markdown table).
pub fn targets(rows: &[Value]) -> String {
    let get = |key: &str, field: &str| row(rows, key).map_or(f64::NAN, |r| f(r, field));
    let ratio = |k1, f1, k2, f2| get(k1, f1) / get(k2, f2);
    let torch =
        row(rows, "lora-qv").map_or(f64::NAN, |r| f(r, "step_s") / f(&r["pytorch"], "step_s"));
    // (target, measured, met)
    let checks: [Check; 8] = [
        (
            "LoRA q,v step / frozen-base step ≤ 1.10",
            ratio("lora-qv", "step_s", "frozen", "step_s"),
            |v| v <= 1.10,
        ),
        (
            "burn apply_lora step / LoRA q,v step ≥ 1.30",
            ratio("burn-lora", "step_s", "lora-qv", "step_s"),
            |v| v >= 1.30,
        ),
        (
            "merged LoRA prompt / base prompt ≤ 1.02",
            ratio("lora-qv", "prompt_merged_s", "frozen", "prompt_merged_s"),
            |v| v <= 1.02,
        ),
        (
            "merged LoRA 1 token / base 1 token ≤ 1.02",
            ratio("lora-qv", "token_merged_s", "frozen", "token_merged_s"),
            |v| v <= 1.02,
        ),
        (
            "unmerged / merged LoRA 1 token ≤ 1.10",
            ratio("lora-qv", "token_unmerged_s", "lora-qv", "token_merged_s"),
            |v| v <= 1.10,
        ),
        (
            "LoRA-FA peak step heap / LoRA's < 1",
            ratio("lorafa-qv", "peak_heap_bytes", "lora-qv", "peak_heap_bytes"),
            |v| v < 1.0,
        ),
        (
            "Bone default step / LoRA q,v step ≤ 1.10",
            ratio("bone", "step_s", "lora-qv", "step_s"),
            |v| v <= 1.10,
        ),
        ("LoRA q,v step, ours / PyTorch ≤ 1.0", torch, |v| v <= 1.0),
    ];
    let mut t = String::from("| target | measured | met |\n|---|---:|:---:|\n");
    for (what, v, ok) in checks {
        let (shown, met) = if v.is_nan() {
            ("—".to_string(), "not measured")
        } else {
            (format!("{v:.3}"), if ok(v) { "yes" } else { "no" })
        };
        let _ = writeln!(t, "| {what} | {shown} | {met} |");
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
            t.contains("| LoRA q,v step / frozen-base step ≤ 1.10 | 1.200 | no |"),
            "{t}"
        );
        assert!(
            t.contains("| LoRA-FA peak step heap / LoRA's < 1 | 0.900 | yes |"),
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
}
