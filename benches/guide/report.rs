//! Tables, charts and the guide's Markdown from measured rows.

use std::fmt::Write as _;

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

/// The measured table of one model (Markdown), ratios against the LoRA q,v row.
pub fn table(rows: &[Value]) -> String {
    let lora = rows
        .iter()
        .find(|r| r["method"] == "LoRA r16 q,v")
        .cloned()
        .unwrap_or(Value::Null);
    let mut t = String::from(
        "| method | trainable params | % | adapter file | train step | tokens/s | step / LoRA q,v | peak step memory | prompt unmerged → merged | 1 token unmerged → merged |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {:.3} | {} | {} | {:.0} | {:.2}× | {} | {} → {} | {} → {} |",
            r["method"].as_str().unwrap_or("?"),
            thousands(r["trainable_params"].as_u64().unwrap_or(0)),
            f(r, "trainable_percent"),
            mib(f(r, "file_bytes")),
            ms(f(r, "step_s")),
            f(r, "tokens_per_s"),
            f(r, "step_s") / f(&lora, "step_s"),
            mib(f(r, "peak_step_bytes")),
            ms(f(r, "prompt_unmerged_s")),
            ms(f(r, "prompt_merged_s")),
            ms(f(r, "token_unmerged_s")),
            ms(f(r, "token_merged_s")),
        );
    }
    t
}

/// A horizontal bar chart (SVG) of `key` per row, scaled by `scale` and labelled with `unit`.
pub fn bar_chart(title: &str, rows: &[Value], key: &str, scale: f64, unit: &str) -> String {
    let (w, bar_h, left) = (760.0, 26.0, 230.0);
    let h = 50.0 + bar_h * rows.len() as f64;
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

/// Replaces the text between `<!-- guide:start -->` and `<!-- guide:end -->` in `doc` (appending
/// the markers when absent).
pub fn splice(doc: &str, generated: &str) -> String {
    const START: &str = "<!-- guide:start -->";
    const END: &str = "<!-- guide:end -->";
    let block = format!("{START}\n{generated}\n{END}");
    match (doc.find(START), doc.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &doc[..a], &doc[b + END.len()..]),
        _ => format!("{}\n\n{block}\n", doc.trim_end()),
    }
}
