//! The layer check behind `tests/tests/architecture.rs`: a crate's modules sorted into
//! layers, top first, and the imports that break them.
//!
//! It reads every `.rs` file of a crate's `src/`, with comments and string literals blanked
//! out, and takes each path that names a module of the crate: `crate::x…` (also in
//! `use crate::{x, y::z}` groups and in code, not only in `use` lines), `super::…` that
//! climbs to the crate root, and in `lib.rs`/`main.rs` a path that starts with a top-level
//! module. Then:
//!
//! - every top-level module is in exactly one layer, and every module the table names exists;
//! - no module imports one in a layer above its own;
//! - no top-level modules import each other in a circle (within a layer, where the rule
//!   above allows both directions).
//!
//! A module is a top-level module of the crate (`drill` for `drill/report.rs`); a file
//! included with `#[path = "…"]` belongs to the module that includes it. `""` names the
//! crate root (`lib.rs`, `main.rs`, and items defined in `lib.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A crate's layers, top first: a name in the words of its `lib.rs` doc, and its modules.
pub type Layers = &'static [(&'static str, &'static [&'static str])];

/// Fails with every problem [`problems`] finds in the crate at `<workspace>/<dir>`.
pub fn assert_layered(dir: &str, layers: Layers) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir)
        .join("src");
    let found = problems(&src, dir, layers);
    assert!(
        found.is_empty(),
        "{dir}/: {} problem(s) with the layers written in tests/tests/architecture.rs \
         (dependencies point down only; modules of one layer form no circle):\n{}",
        found.len(),
        found.join("\n")
    );
}

/// One path in a file that names a module of the crate.
#[derive(Debug, Clone)]
struct Import {
    /// The file, as `<dir>/src/…`.
    file: String,
    /// 1-based.
    line: usize,
    /// The path as written, up to the module it names: `crate::commands`.
    text: String,
    /// The importing file's top-level module.
    from: String,
    /// The module named.
    to: String,
}

/// Everything wrong with the crate whose sources are in `src` (shown as `<dir>/src/…`).
pub fn problems(src: &Path, dir: &str, layers: Layers) -> Vec<String> {
    let mut out = Vec::new();
    let modules = top_modules(src);
    let mut layer_of: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (i, (name, mods)) in layers.iter().enumerate() {
        for m in *mods {
            if layer_of.insert(m, (i, name)).is_some() {
                out.push(format!("the table puts {m:?} in two layers"));
            }
            if !m.is_empty() && !modules.contains(*m) {
                out.push(format!(
                    "the table names {m:?}, which is no module of {dir}/"
                ));
            }
        }
    }
    for m in &modules {
        if !layer_of.contains_key(m.as_str()) {
            out.push(format!(
                "module {m:?} of {dir}/ is in no layer: add it to the table"
            ));
        }
    }
    let imports = read_imports(src, dir, &modules);
    for i in &imports {
        let (Some(&(from, from_name)), Some(&(to, to_name))) =
            (layer_of.get(i.from.as_str()), layer_of.get(i.to.as_str()))
        else {
            continue;
        };
        if to < from {
            out.push(format!(
                "{}:{}: `{}`: {} ({from_name}) imports {} ({to_name}), a layer above it",
                i.file,
                i.line,
                i.text,
                show(&i.from),
                show(&i.to)
            ));
        }
    }
    for circle in circles(&imports) {
        let mut msg = format!("circle of modules {}, tied by:", circle.join(", "));
        for i in imports
            .iter()
            .filter(|i| circle.contains(&i.from) && circle.contains(&i.to))
        {
            let _ = write!(msg, "\n    {}:{}: `{}`", i.file, i.line, i.text);
        }
        out.push(msg);
    }
    out
}

fn show(module: &str) -> &str {
    if module.is_empty() {
        "the crate root"
    } else {
        module
    }
}

/// The modules `lib.rs` declares (`mod x;`, `pub mod x;`, with any attributes).
fn top_modules(src: &Path) -> BTreeSet<String> {
    let lib = code_only(&std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs"));
    let tokens = tokenize(&lib);
    let mut out = BTreeSet::new();
    for w in tokens.windows(3) {
        if let [Tok::Ident(m, _), Tok::Ident(name, _), Tok::Sym(';', _)] = w {
            if m == "mod" {
                out.insert(name.clone());
            }
        }
    }
    out
}

/// The imports of every file under `src`, each attributed to its top-level module.
fn read_imports(src: &Path, dir: &str, modules: &BTreeSet<String>) -> Vec<Import> {
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    // Files included with `#[path = "x.rs"]` belong to the module of the including file.
    let mut included: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    let mut sources = BTreeMap::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read a source file");
        for (at, _) in text.match_indices("#[path = \"") {
            let rest = &text[at + 10..];
            let end = rest.find('"').unwrap_or(0);
            let name = &rest[..end];
            // The module it becomes: `mod tests;` after the attribute.
            let tokens = tokenize(&code_only(&rest[end + 1..]));
            let module = tokens.windows(2).find_map(|w| match w {
                [Tok::Ident(m, _), Tok::Ident(n, _)] if m == "mod" => Some(n.clone()),
                _ => None,
            });
            let mut path = module_path(src, f);
            path.extend(module);
            included.insert(f.parent().expect("in src").join(name), path);
        }
        sources.insert(f.clone(), text);
    }
    let mut out = Vec::new();
    for (f, text) in &sources {
        let path = included
            .get(f)
            .cloned()
            .unwrap_or_else(|| module_path(src, f));
        let shown = format!(
            "{dir}/src/{}",
            f.strip_prefix(src).expect("under src").display()
        );
        out.extend(imports_of(&code_only(text), &path, modules, &shown));
    }
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read a source directory")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `[]` for `lib.rs`/`main.rs`, `["drill"]` for `drill/mod.rs`
/// or `drill.rs`, `["drill", "report"]` for `drill/report.rs`.
fn module_path(src: &Path, f: &Path) -> Vec<String> {
    let rel = f.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !(stem == "mod" || (parts.is_empty() && (stem == "lib" || stem == "main"))) {
        parts.push(stem.to_string());
    }
    parts
}

/// A token of code: an identifier or keyword, or one punctuation character (`::` is two
/// `:`), with its line.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String, usize),
    Sym(char, usize),
}

impl Tok {
    fn line(&self) -> usize {
        match self {
            Tok::Ident(_, l) | Tok::Sym(_, l) => *l,
        }
    }
    fn is_ident(&self, s: &str) -> bool {
        matches!(self, Tok::Ident(i, _) if i == s)
    }
    fn is_sym(&self, c: char) -> bool {
        matches!(self, Tok::Sym(x, _) if *x == c)
    }
}

fn tokenize(code: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        } else if c.is_alphabetic() || c == '_' {
            let mut id = c.to_string();
            while let Some(&n) = chars.peek() {
                if !(n.is_alphanumeric() || n == '_') {
                    break;
                }
                id.push(n);
                chars.next();
            }
            out.push(Tok::Ident(id, line));
        } else if !c.is_whitespace() && !c.is_numeric() {
            out.push(Tok::Sym(c, line));
        }
    }
    out
}

/// The paths of `code` (comments and literals blanked) that name a module of the crate,
/// for a file whose module path is `path`.
fn imports_of(code: &str, path: &[String], modules: &BTreeSet<String>, file: &str) -> Vec<Import> {
    let t = tokenize(code);
    let sep = |i: usize| {
        t.get(i).is_some_and(|x| x.is_sym(':')) && t.get(i + 1).is_some_and(|x| x.is_sym(':'))
    };
    let from = path.first().cloned().unwrap_or_default();
    let mut out = Vec::new();
    // Inline modules (`mod tests { … }`) opened and not yet closed: (name, brace depth).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < t.len() {
        if t[i].is_sym('{') {
            depth += 1;
        } else if t[i].is_sym('}') {
            depth -= 1;
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
        } else if t[i].is_ident("mod") && t.get(i + 2).is_some_and(|x| x.is_sym('{')) {
            if let Some(Tok::Ident(name, _)) = t.get(i + 1) {
                inline.push((name.clone(), depth));
            }
        }
        let after_path = i > 0 && (t[i - 1].is_sym(':') || t[i - 1].is_sym('$'));
        let starts = !after_path && sep(i + 1);
        if !starts {
            i += 1;
            continue;
        }
        // Where the path starts, as a module path, and the tokens it consumed.
        let mut here: Vec<String> = path
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        let mut j = i;
        let mut text = String::new();
        let base = if t[i].is_ident("crate") {
            j += 3;
            text.push_str("crate::");
            Some(Vec::new())
        } else if t[i].is_ident("super") {
            while t.get(j).is_some_and(|x| x.is_ident("super")) && sep(j + 1) {
                here.pop();
                text.push_str("super::");
                j += 3;
            }
            Some(here)
        } else if path.is_empty() && inline.is_empty() {
            // The crate root names its modules without `crate::`.
            Some(Vec::new())
        } else {
            None
        };
        let Some(base) = base else {
            i += 1;
            continue;
        };
        if !base.is_empty() {
            // Still inside this top-level module: nothing crosses modules here.
            i = j.max(i + 1);
            continue;
        }
        // At the crate root: the next name, or each name of a `{…}` group.
        let mut firsts = Vec::new();
        if t.get(j).is_some_and(|x| x.is_sym('{')) {
            let mut d = 0;
            let mut expect_first = true;
            let mut k = j;
            while k < t.len() {
                match &t[k] {
                    Tok::Sym('{', _) => {
                        d += 1;
                        expect_first = d == 1;
                    }
                    Tok::Sym('}', _) => {
                        d -= 1;
                        if d == 0 {
                            break;
                        }
                    }
                    Tok::Sym(',', _) if d == 1 => expect_first = true,
                    Tok::Ident(name, line) if expect_first => {
                        firsts.push((name.clone(), *line));
                        expect_first = false;
                    }
                    _ => expect_first = false,
                }
                k += 1;
            }
        } else if let Some(Tok::Ident(name, line)) = t.get(j) {
            firsts.push((name.clone(), *line));
        } else if t.get(j).is_some_and(|x| x.is_sym('*')) {
            firsts.push((String::new(), t[j].line()));
        }
        for (name, line) in firsts {
            let to = if modules.contains(&name) {
                name.clone()
            } else if text.is_empty() {
                // A root path not starting with a module: a crate or a local name.
                continue;
            } else {
                String::new()
            };
            if to != from {
                out.push(Import {
                    file: file.to_string(),
                    line,
                    text: format!("{text}{name}"),
                    from: from.clone(),
                    to,
                });
            }
        }
        i = j.max(i + 1);
    }
    out
}

/// The circles among the modules `imports` tie together (strongly connected components of
/// more than one module), each sorted.
fn circles(imports: &[Import]) -> Vec<Vec<String>> {
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for i in imports {
        edges.entry(&i.from).or_default().insert(&i.to);
        edges.entry(&i.to).or_default();
    }
    let reach = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start];
        while let Some(m) = todo.pop() {
            for &n in &edges[m] {
                if seen.insert(n) {
                    todo.push(n);
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&str, BTreeSet<&str>> = edges.keys().map(|&m| (m, reach(m))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for &m in edges.keys() {
        let circle: Vec<String> = edges
            .keys()
            .filter(|&&n| reaches[m].contains(n) && reaches[n].contains(m))
            .map(|n| show(n).to_string())
            .collect();
        if circle.len() > 1 && !out.contains(&circle) {
            out.push(circle);
        }
    }
    out
}

/// `src` with comments, string, byte-string and character literals replaced by spaces
/// (newlines kept, so lines stay where they were); lifetimes stay.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let ident_before = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut d = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    d += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    d -= 1;
                    out.push_str("  ");
                    i += 2;
                    if d == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (!ident_before
                || (i > 0 && c[i - 1] == 'b' && (i < 2 || !c[i - 2].is_alphanumeric())))
            && matches!(c.get(i + 1), Some('#') | Some('"'))
            && raw_string_start(&c, i + 1).is_some()
        {
            let hashes = raw_string_start(&c, i + 1).expect("checked");
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let close: Vec<char> = close.chars().collect();
            let mut k = i + 2 + hashes;
            while k < c.len() && c[k..].iter().take(close.len()).ne(close.iter()) {
                k += 1;
            }
            let end = (k + close.len()).min(c.len());
            for &ch in &c[i..end] {
                blank(&mut out, ch);
            }
            i = end;
        } else if c[i] == '"' {
            blank(&mut out, c[i]);
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            if i < c.len() {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '\'' && (c.get(i + 1) == Some(&'\\') || c.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\''); `'a` without a closing quote is a lifetime.
            let mut k = i + 1;
            if c[k] == '\\' {
                k += 2;
            }
            while k < c.len() && c[k] != '\'' {
                k += 1;
            }
            for &ch in &c[i..=k.min(c.len() - 1)] {
                blank(&mut out, ch);
            }
            i = k + 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The number of `#` of a raw string whose `r` is just before `at` (`r"`, `r#"`, …).
fn raw_string_start(c: &[char], at: usize) -> Option<usize> {
    let hashes = c[at..].iter().take_while(|&&ch| ch == '#').count();
    (c.get(at + hashes) == Some(&'"')).then_some(hashes)
}
