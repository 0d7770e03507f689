//! The rule that keeps kernel structure offsets out of the eBPF crate: Rust
//! eBPF objects carry no CO-RE relocations, so an offset compiled in is right
//! only for the kernel it came from. Every kernel read goes through one
//! helper, `read(base, off.FIELD)`, whose offsets userspace resolves from the
//! running kernel's BTF; tracepoint context reads use named constants from
//! the tracepoints' format files (a stable ABI).

/// Problems found in a crate's files, (name, source) each, one line each
/// (file:line: what). The raw kernel read must appear exactly once in the
/// whole crate: in the helper every other read goes through.
pub fn check_crate(files: &[(String, String)]) -> Vec<String> {
    let mut problems: Vec<String> = files.iter().flat_map(|(f, s)| check(f, s)).collect();
    let raw_reads: usize = files
        .iter()
        .map(|(_, s)| s.matches("bpf_probe_read_kernel(").count())
        .sum();
    if raw_reads != 1 {
        problems.push(format!(
            "bpf_probe_read_kernel( appears {raw_reads} times in the crate; only the read() helper may call it"
        ));
    }
    problems
}

/// Problems in one file's reads, one line each (file:line: what).
pub fn check(file: &str, src: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let line_of = |pos: usize| src[..pos].matches('\n').count() + 1;
    for (pos, _) in src.match_indices("read") {
        let before = src[..pos].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // part of a longer name: read_at, bpf_probe_read_kernel ...
        }
        let rest = &src[pos + 4..];
        let rest = match rest.strip_prefix("::<") {
            Some(r) => match r.find(">(") {
                Some(i) => &r[i + 1..],
                None => continue,
            },
            None => rest,
        };
        let Some(args) = rest.strip_prefix('(').and_then(call_args) else {
            continue;
        };
        let second = args.get(1).map(|a| a.trim()).unwrap_or("");
        // ELEMENT (0) reads an array element itself: an index, not a field.
        let ok = second.starts_with("off.")
            || second.starts_with("config().offsets.")
            || second == "ELEMENT";
        // `fn read<T>(base: *const u8, off: u32)` itself is the helper.
        let is_definition = src[..pos].trim_end().ends_with("fn");
        if !ok && !is_definition && args.len() == 2 {
            problems.push(format!(
                "{file}:{}: kernel read at `{second}`: offsets must come from the BTF-resolved config (off.FIELD)",
                line_of(pos)
            ));
        }
    }
    for pat in [".add(", ".offset(", "wrapping_add(", "read_at("] {
        for (pos, _) in src.match_indices(pat) {
            let arg = src[pos + pat.len()..].trim_start();
            if arg.starts_with(|c: char| c.is_ascii_digit()) {
                problems.push(format!(
                    "{file}:{}: `{pat}` with a literal offset: name it (BTF config or a tracepoint-format constant)",
                    line_of(pos)
                ));
            }
        }
    }
    problems
}

/// The top-level comma-separated arguments of a call whose text starts just
/// after its opening parenthesis.
fn call_args(s: &str) -> Option<Vec<&str>> {
    let mut depth = 0usize;
    let mut start = 0;
    let mut args = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '<' => depth += 1,
            ')' if depth == 0 => {
                args.push(&s[start..i]);
                return Some(args);
            }
            ')' | ']' | '>' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                args.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELPER: &str = "fn read<T>(base: *const u8, off: u32) -> R { bpf_probe_read_kernel(base.wrapping_add(off as usize)) }\n";

    #[test]
    fn resolved_offsets_pass() {
        let src = format!(
            "{HELPER}let f: u16 = read(sk, off.family)?;\nlet x = read::<[u8; 4]>(sk, off.daddr)?;\nlet c = read(sk, config().offsets.cookie)?;\nlet r = ctx.read_at(SYSCALL_RET)?;\n"
        );
        assert_eq!(check("m.rs", &src), Vec::<String>::new());
    }

    #[test]
    fn literal_offsets_fail() {
        let src = format!(
            "{HELPER}\nlet f: u16 = read(sk, 16)?;\nlet p = sk.add(24);\nlet r = ctx.read_at(16)?;\n"
        );
        let p = check("m.rs", &src);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("m.rs:3: kernel read at `16`"), "{p:?}");
        // The raw read counts across the crate: a second one in another file fails.
        let other = "fn other() { bpf_probe_read_kernel(x) }\n".to_string();
        let files = [("m.rs".into(), HELPER.to_string()), ("n.rs".into(), other)];
        assert!(check_crate(&files)[0].contains("appears 2 times"));
        assert_eq!(check_crate(&files[..1]), Vec::<String>::new());
    }

    #[test]
    fn the_ebpf_crate_follows_the_rule() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../closetrace-ebpf/src");
        let files = crate::ebpf_sources(&root).expect("eBPF sources");
        assert!(files.len() > 5, "the crate's modules: {}", files.len());
        assert_eq!(check_crate(&files), Vec::<String>::new());
    }
}
