//! The machine a run measured: the CPU, how its logical CPUs map onto cores, its caches and the
//! vector extensions the products' kernels depend on, read from Linux's `/proc/cpuinfo` and
//! `/sys/devices/system/cpu`. A field that cannot be read is left out, never guessed.
//!
//! The guide's figures depend on all of these: on a 2-core VM of one CPU family PyTorch's MKL
//! ran its AVX-512 kernels, on another (AMD with AVX-512) it did not, and two logical CPUs that
//! are one core's two hardware threads share that core's vector units and caches. A run's
//! `results.json` keeps this record, and the guide's header prints it.

use serde_json::{Map, Value, json};

/// The vector extensions recorded, by their `/proc/cpuinfo` flag and the name printed.
const EXTENSIONS: [(&str, &str); 4] = [
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("avx512f", "AVX-512F"),
    ("avx512_bf16", "AVX-512 BF16"),
];

/// This machine, as far as Linux says: see [`from_cpuinfo`], plus `online_cpus`,
/// `threads_per_core` (logical CPUs sharing CPU 0's core) and `caches` (CPU 0's).
pub fn describe() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut m = from_cpuinfo(&read("/proc/cpuinfo").unwrap_or_default());
    let cpu = "/sys/devices/system/cpu";
    if let Some(n) = read(&format!("{cpu}/online")).and_then(|s| cpu_list_len(&s)) {
        m["online_cpus"] = json!(n);
    }
    let siblings = read(&format!("{cpu}/cpu0/topology/core_cpus_list"))
        .or_else(|| read(&format!("{cpu}/cpu0/topology/thread_siblings_list")));
    if let Some(n) = siblings.and_then(|s| cpu_list_len(&s)) {
        m["threads_per_core"] = json!(n);
    }
    let mut caches = Vec::new();
    for index in 0.. {
        let dir = format!("{cpu}/cpu0/cache/index{index}");
        let Some(level) = read(&format!("{dir}/level")) else {
            break;
        };
        let field = |f: &str| read(&format!("{dir}/{f}")).map(|s| s.trim().to_string());
        let mut c = json!({"level": level.trim(), "type": field("type"), "size": field("size")});
        if let Some(n) = field("shared_cpu_list").and_then(|s| cpu_list_len(&s)) {
            c["shared_by_cpus"] = json!(n);
        }
        caches.push(c);
    }
    if !caches.is_empty() {
        m["caches"] = json!(caches);
    }
    m
}

/// The first processor's `vendor_id`, `cpu family`, `model` and `model name` in `cpuinfo`
/// (`/proc/cpuinfo`'s text) as `vendor`, `family`, `model` and `cpu`, and which of the
/// recorded vector extensions its `flags` name (`extensions`).
pub fn from_cpuinfo(cpuinfo: &str) -> Value {
    let mut m = Map::new();
    let first = cpuinfo.split("\n\n").next().unwrap_or("");
    for line in first.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let name = match key {
            "vendor_id" => "vendor",
            "cpu family" => "family",
            "model" => "model",
            "model name" => "cpu",
            "flags" => {
                let flags: Vec<&str> = value.split_whitespace().collect();
                let present: Vec<&str> = EXTENSIONS
                    .iter()
                    .filter(|(flag, _)| flags.contains(flag))
                    .map(|(_, name)| *name)
                    .collect();
                m.insert("extensions".into(), json!(present));
                continue;
            }
            _ => continue,
        };
        m.insert(name.into(), json!(value));
    }
    Value::Object(m)
}

/// How many CPUs a Linux CPU list (`0-3,8,10-11`) names; `None` when it is not one.
pub fn cpu_list_len(list: &str) -> Option<usize> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    let mut n = 0;
    for part in list.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// One line for the guide's header: `AMD EPYC (AuthenticAMD, family 26, model 2), 2 logical
/// CPUs, 1 thread per core; caches L1d 48K, L1i 32K, L2 1024K, L3 32768K (shared by 2 CPUs);
/// AVX2, FMA, AVX-512F`. Empty when nothing was recorded.
pub fn summary(m: &Value) -> String {
    let s = |k: &str| m[k].as_str().map(str::to_string);
    let mut parts = Vec::new();
    if let Some(cpu) = s("cpu") {
        let ids: Vec<String> = [
            s("vendor"),
            s("family").map(|f| format!("family {f}")),
            s("model").map(|x| format!("model {x}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        parts.push(if ids.is_empty() {
            cpu
        } else {
            format!("{cpu} ({})", ids.join(", "))
        });
    }
    let mut topology = Vec::new();
    if let Some(n) = m["online_cpus"].as_u64() {
        topology.push(format!("{n} logical CPU{}", if n == 1 { "" } else { "s" }));
    }
    if let Some(t) = m["threads_per_core"].as_u64() {
        topology.push(format!(
            "{t} thread{} per core",
            if t == 1 { "" } else { "s" }
        ));
    }
    if !topology.is_empty() {
        parts.push(topology.join(", "));
    }
    let mut text = parts.join(", ");
    if let Some(caches) = m["caches"].as_array() {
        let list: Vec<String> = caches
            .iter()
            .map(|c| {
                let kind = match c["type"].as_str() {
                    Some("Data") => "d",
                    Some("Instruction") => "i",
                    _ => "",
                };
                let shared = match c["shared_by_cpus"].as_u64() {
                    Some(n) if n > 1 => format!(" (shared by {n} CPUs)"),
                    _ => String::new(),
                };
                format!(
                    "L{}{kind} {}{shared}",
                    c["level"].as_str().unwrap_or("?"),
                    c["size"].as_str().unwrap_or("?")
                )
            })
            .collect();
        text.push_str(&format!("; caches {}", list.join(", ")));
    }
    if let Some(ext) = m["extensions"].as_array() {
        let names: Vec<&str> = ext.iter().filter_map(Value::as_str).collect();
        let names = if names.is_empty() {
            "none of AVX2, FMA, AVX-512F".to_string()
        } else {
            names.join(", ")
        };
        text.push_str(&format!("; {names}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n\
        model\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw\n\n\
        processor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: fpu\n";

    #[test]
    fn the_first_processor_names_the_cpu_and_its_extensions() {
        let m = from_cpuinfo(CPUINFO);
        assert_eq!(m["vendor"], "AuthenticAMD");
        assert_eq!(m["family"], "26");
        assert_eq!(m["model"], "2");
        assert_eq!(m["cpu"], "AMD EPYC");
        assert_eq!(m["extensions"], json!(["AVX2", "FMA", "AVX-512F"]));
        // No AVX-512 BF16 flag, and `avx512bw` is not `avx512f`: only whole flags count.
        let m = from_cpuinfo("flags\t: avx512bw avx2\n");
        assert_eq!(m["extensions"], json!(["AVX2"]));
        assert_eq!(from_cpuinfo(""), json!({}));
    }

    #[test]
    fn cpu_lists_count_ranges_and_single_cpus() {
        assert_eq!(cpu_list_len("0\n"), Some(1));
        assert_eq!(cpu_list_len("0-1"), Some(2));
        assert_eq!(cpu_list_len("0-3,8,10-11"), Some(7));
        assert_eq!(cpu_list_len(""), None);
        assert_eq!(cpu_list_len("3-1"), None);
        assert_eq!(cpu_list_len("a"), None);
    }

    #[test]
    fn the_summary_says_what_was_recorded_and_nothing_else() {
        let mut m = from_cpuinfo(CPUINFO);
        m["online_cpus"] = json!(2);
        m["threads_per_core"] = json!(2);
        m["caches"] = json!([
            {"level": "1", "type": "Data", "size": "48K", "shared_by_cpus": 2},
            {"level": "3", "type": "Unified", "size": "32768K", "shared_by_cpus": 2},
        ]);
        assert_eq!(
            summary(&m),
            "AMD EPYC (AuthenticAMD, family 26, model 2), 2 logical CPUs, 2 threads per core; \
             caches L1d 48K (shared by 2 CPUs), L3 32768K (shared by 2 CPUs); AVX2, FMA, AVX-512F"
        );
        assert_eq!(summary(&json!({})), "");
        assert_eq!(
            summary(&json!({"online_cpus": 1, "extensions": []})),
            "1 logical CPU; none of AVX2, FMA, AVX-512F"
        );
    }

    #[test]
    fn this_machine_is_described_without_failing() {
        // Whatever Linux exposes here: every recorded field has the documented type.
        let m = describe();
        for key in ["online_cpus", "threads_per_core"] {
            assert!(
                m.get(key)
                    .is_none_or(|v| v.as_u64().is_some_and(|n| n >= 1))
            );
        }
        assert!(m.get("extensions").is_none_or(Value::is_array));
    }
}
