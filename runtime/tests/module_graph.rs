//! The module graph of `runtime/src` has no import circle.
//!
//! Reads every `.rs` file under `src/`, finds the paths each one names
//! (`use` statements, grouped `use a::{b, c::d}` forms included, and paths
//! written inline in code such as `crate::engine::run(..)`; comments,
//! doc comments and string literals do not count), resolves them to the
//! module they lead to (`crate::`, `super::`, `self::`, a child module's
//! name, and items the crate root or a module re-exports with `pub use`),
//! and checks that
//!
//! * the top-level modules (a directory module such as `router/` counts as
//!   one) form no cycle, and
//! * inside each directory module, the module file and its submodules form
//!   no cycle among themselves.
//!
//! A failure prints each cycle with the line that makes every one of its
//! edges. Run with `--nocapture` to see the layering.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Skips a (possibly raw) string literal starting at `i` (at the `r` or the
/// opening quote, any `b`/`c` prefix already skipped); returns the index
/// after it.
fn skip_string(s: &[char], mut i: usize, line: &mut usize) -> usize {
    if s[i] == 'r' {
        i += 1;
        let mut hashes = 0;
        while s.get(i) == Some(&'#') {
            hashes += 1;
            i += 1;
        }
        i += 1; // the opening quote
        while i < s.len() {
            if s[i] == '\n' {
                *line += 1;
            }
            if s[i] == '"' && (1..=hashes).all(|k| s.get(i + k) == Some(&'#')) {
                return i + 1 + hashes;
            }
            i += 1;
        }
        return i;
    }
    i += 1; // the opening quote
    while i < s.len() {
        match s[i] {
            '\\' => {
                if s.get(i + 1) == Some(&'\n') {
                    *line += 1;
                }
                i += 2;
                continue;
            }
            '\n' => *line += 1,
            '"' => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Whether a string literal (raw or not) starts at `i`, after a `b`/`c`
/// prefix if any.
fn string_at(s: &[char], i: usize) -> bool {
    match s.get(i) {
        Some('"') => true,
        Some('r') => {
            let mut j = i + 1;
            while s.get(j) == Some(&'#') {
                j += 1;
            }
            s.get(j) == Some(&'"')
        }
        _ => false,
    }
}

/// Identifiers, `::` and punctuation of `src`, without comments, string,
/// character and number literals, and lifetimes.
fn lex(src: &str) -> Vec<Token> {
    let s: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && s.get(i + 1) == Some(&'/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && s.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if s[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' || (c == 'r' && string_at(&s, i)) {
            i = skip_string(&s, i, &mut line);
        } else if (c == 'b' || c == 'c') && string_at(&s, i + 1) {
            i = skip_string(&s, i + 1, &mut line);
        } else if c == 'b' && s.get(i + 1) == Some(&'\'') {
            i = skip_char_or_lifetime(&s, i + 1);
        } else if c == '\'' {
            i = skip_char_or_lifetime(&s, i);
        } else if c == 'r'
            && s.get(i + 1) == Some(&'#')
            && s.get(i + 2).is_some_and(|&c| is_ident_start(c))
        {
            // A raw identifier.
            let start = i + 2;
            i = start;
            while i < s.len() && is_ident_char(s[i]) {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(s[start..i].iter().collect()),
                line,
            });
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident_char(s[i]) {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(s[start..i].iter().collect()),
                line,
            });
        } else if c.is_ascii_digit() {
            while i < s.len() && is_ident_char(s[i]) {
                i += 1;
            }
        } else if c == ':' && s.get(i + 1) == Some(&':') {
            out.push(Token {
                tok: Tok::Sep,
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                tok: Tok::Punct(c),
                line,
            });
            i += 1;
        }
    }
    out
}

/// Skips a character literal or a lifetime/label starting at the quote `i`.
fn skip_char_or_lifetime(s: &[char], i: usize) -> usize {
    if s.get(i + 1) == Some(&'\\') {
        let mut j = i + 2;
        while j < s.len() && s[j] != '\'' {
            j += 1;
        }
        return j + 1;
    }
    if s.get(i + 2) == Some(&'\'') {
        return i + 3;
    }
    // A lifetime or label: the quote, then the identifier (lexed as one,
    // harmlessly).
    i + 1
}

/// One path a file names.
#[derive(Debug, Clone)]
struct Ref {
    /// The module (inline modules included) the path is written in.
    from: ModPath,
    segments: Vec<String>,
    line: usize,
}

/// A name a module re-exports with `pub use` (at its top level).
#[derive(Debug, Clone)]
struct Reexport {
    from: ModPath,
    segments: Vec<String>,
}

#[derive(Default)]
struct Scan {
    inline_mods: Vec<ModPath>,
    refs: Vec<Ref>,
    /// name → what it re-exports.
    reexports: BTreeMap<String, Reexport>,
}

fn ident(t: Option<&Token>) -> Option<&str> {
    match t.map(|t| &t.tok) {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

fn punct(t: Option<&Token>, c: char) -> bool {
    matches!(t.map(|t| &t.tok), Some(Tok::Punct(p)) if *p == c)
}

fn sep(t: Option<&Token>) -> bool {
    matches!(t.map(|t| &t.tok), Some(Tok::Sep))
}

/// A path of a use tree: its segments, the name it binds (`None` for a
/// glob), and its line.
type UsePath = (Vec<String>, Option<String>, usize);

/// Parses a use tree at `*i` (after `use`, or inside a group) with `prefix`.
fn use_tree(t: &[Token], i: &mut usize, prefix: Vec<String>, out: &mut Vec<UsePath>) {
    let mut path = prefix;
    if sep(t.get(*i)) {
        *i += 1;
    }
    loop {
        let line = t.get(*i).map_or(0, |t| t.line);
        if punct(t.get(*i), '*') {
            *i += 1;
            out.push((path, None, line));
            return;
        }
        if punct(t.get(*i), '{') {
            *i += 1;
            loop {
                if punct(t.get(*i), '}') {
                    *i += 1;
                    return;
                }
                if *i >= t.len() {
                    return;
                }
                let before = *i;
                use_tree(t, i, path.clone(), out);
                if punct(t.get(*i), ',') {
                    *i += 1;
                }
                if *i == before {
                    *i += 1; // malformed: make progress
                }
            }
        }
        let Some(seg) = ident(t.get(*i)) else {
            return;
        };
        let seg = seg.to_string();
        *i += 1;
        let in_group_self = seg == "self" && !path.is_empty() && !sep(t.get(*i));
        if !in_group_self {
            path.push(seg);
        }
        if sep(t.get(*i)) {
            *i += 1;
            continue;
        }
        let mut name = path.last().cloned();
        if ident(t.get(*i)) == Some("as") {
            name = ident(t.get(*i + 1)).map(str::to_string);
            *i += 2;
        }
        out.push((path, name, line));
        return;
    }
}

/// Whether the `use` at `i` is preceded by a `pub` visibility.
fn is_pub(t: &[Token], i: usize) -> bool {
    if i == 0 {
        return false;
    }
    let mut j = i - 1;
    if punct(t.get(j), ')') {
        while j > 0 && !punct(t.get(j), '(') {
            j -= 1;
        }
        if j == 0 {
            return false;
        }
        j -= 1;
    }
    ident(t.get(j)) == Some("pub")
}

fn scan(tokens: &[Token], file_mod: &ModPath) -> Scan {
    let mut sc = Scan::default();
    let mut depth = 0usize;
    // Inline modules open around this point: (name, depth inside it).
    let mut stack: Vec<(String, usize)> = Vec::new();
    let cur = |stack: &Vec<(String, usize)>| {
        let mut m = file_mod.clone();
        m.extend(stack.iter().map(|(n, _)| n.clone()));
        m
    };
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].tok {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                while stack.last().is_some_and(|(_, d)| *d > depth) {
                    stack.pop();
                }
                i += 1;
            }
            Tok::Ident(k) if k == "mod" => {
                if let Some(name) = ident(tokens.get(i + 1))
                    && punct(tokens.get(i + 2), '{')
                {
                    stack.push((name.to_string(), depth + 1));
                    sc.inline_mods.push(cur(&stack));
                    depth += 1;
                    i += 3;
                } else {
                    i += 1;
                }
            }
            Tok::Ident(k) if k == "use" => {
                let public = is_pub(tokens, i) && stack.is_empty();
                i += 1;
                let mut paths = Vec::new();
                use_tree(tokens, &mut i, Vec::new(), &mut paths);
                let from = cur(&stack);
                for (segments, name, line) in paths {
                    if public && let Some(name) = name {
                        sc.reexports.insert(
                            name,
                            Reexport {
                                from: from.clone(),
                                segments: segments.clone(),
                            },
                        );
                    }
                    sc.refs.push(Ref {
                        from: from.clone(),
                        segments,
                        line,
                    });
                }
            }
            Tok::Ident(first) if sep(tokens.get(i + 1)) && !(i > 0 && sep(tokens.get(i - 1))) => {
                // An inline path: `a::b::c`.
                let line = tokens[i].line;
                let mut segments = vec![first.clone()];
                let mut j = i + 1;
                while sep(tokens.get(j))
                    && let Some(s) = ident(tokens.get(j + 1))
                {
                    segments.push(s.to_string());
                    j += 2;
                }
                sc.refs.push(Ref {
                    from: cur(&stack),
                    segments,
                    line,
                });
                i = j;
            }
            _ => i += 1,
        }
    }
    sc
}

/// The crate's modules and the paths between them.
struct Crate {
    /// Module → the file that holds it.
    files: BTreeMap<ModPath, PathBuf>,
    /// Every module, inline ones included, and the file module it is in.
    modules: BTreeMap<ModPath, ModPath>,
    refs: Vec<(PathBuf, Ref)>,
    reexports: BTreeMap<ModPath, BTreeMap<String, Reexport>>,
}

/// `lib.rs` → `[]`, `a.rs` → `[a]`, `a/mod.rs` → `[a]`, `a/b.rs` → `[a, b]`.
fn module_of(rel: &Path) -> ModPath {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if !(parts.is_empty() && (stem == "lib" || stem == "main")) && stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

impl Crate {
    fn from_sources(sources: &[(PathBuf, String)]) -> Self {
        let mut c = Crate {
            files: BTreeMap::new(),
            modules: BTreeMap::new(),
            refs: Vec::new(),
            reexports: BTreeMap::new(),
        };
        for (rel, src) in sources {
            let m = module_of(rel);
            c.files.insert(m.clone(), rel.clone());
            c.modules.insert(m.clone(), m.clone());
            let sc = scan(&lex(src), &m);
            for im in sc.inline_mods {
                c.modules.insert(im, m.clone());
            }
            c.refs.extend(sc.refs.into_iter().map(|r| (rel.clone(), r)));
            c.reexports.insert(m, sc.reexports);
        }
        c
    }

    /// The file modules `segments` (written in module `from`) leads to:
    /// the module it names, and, when it names an item a module
    /// re-exports, where that item comes from. Empty for paths outside the
    /// crate.
    fn resolve(&self, from: &[String], segments: &[String], hops: usize) -> Vec<ModPath> {
        let Some(first) = segments.first() else {
            return Vec::new();
        };
        let (mut base, mut k): (ModPath, usize) = match first.as_str() {
            "crate" => (Vec::new(), 1),
            "self" => (from.to_vec(), 1),
            "super" => {
                let mut b = from.to_vec();
                let mut k = 0;
                while segments.get(k).map(String::as_str) == Some("super") {
                    b.pop();
                    k += 1;
                }
                (b, k)
            }
            child => {
                let mut m = from.to_vec();
                m.push(child.to_string());
                if !self.modules.contains_key(&m) {
                    return Vec::new();
                }
                (from.to_vec(), 0)
            }
        };
        while let Some(seg) = segments.get(k) {
            let mut m = base.clone();
            m.push(seg.clone());
            if !self.modules.contains_key(&m) {
                break;
            }
            base = m;
            k += 1;
        }
        let file = self.modules.get(&base).cloned().unwrap_or_default();
        let mut out = vec![file.clone()];
        if hops < 8
            && base == file
            && let Some(name) = segments.get(k)
            && let Some(r) = self.reexports.get(&file).and_then(|m| m.get(name))
        {
            out.extend(self.resolve(&r.from, &r.segments, hops + 1));
        }
        out
    }

    /// File module → file module, with the first place that makes the edge.
    fn edges(&self) -> BTreeMap<(ModPath, ModPath), String> {
        let mut edges = BTreeMap::new();
        for (file, r) in &self.refs {
            let from = self.modules[&r.from].clone();
            for to in self.resolve(&r.from, &r.segments, 0) {
                if to != from {
                    edges.entry((from.clone(), to)).or_insert_with(|| {
                        format!("{}:{}: {}", file.display(), r.line, r.segments.join("::"))
                    });
                }
            }
        }
        edges
    }
}

/// `m` as seen from inside `parent`: `parent` itself or its child that
/// holds `m`; `None` outside `parent`.
fn project(parent: &[String], m: &[String]) -> Option<ModPath> {
    if !m.starts_with(parent) {
        return None;
    }
    Some(m[..(parent.len() + 1).min(m.len())].to_vec())
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// A graph and the evidence of each edge.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// The graph among `parent` and its children (the crate root left out: it
/// only re-exports).
fn level_graph(edges: &BTreeMap<(ModPath, ModPath), String>, parent: &[String]) -> Graph {
    let mut g: Graph = BTreeMap::new();
    for ((a, b), why) in edges {
        let (Some(pa), Some(pb)) = (project(parent, a), project(parent, b)) else {
            continue;
        };
        if pa.is_empty() {
            continue;
        }
        g.entry(name(&pa)).or_default();
        if pb.is_empty() {
            continue;
        }
        g.entry(name(&pb)).or_default();
        if pa != pb {
            g.get_mut(&name(&pa))
                .expect("node")
                .entry(name(&pb))
                .or_insert_with(|| why.clone());
        }
    }
    g
}

/// Every cycle's strongly connected component (Tarjan), each with one cycle
/// through it, as a list of nodes.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        on: BTreeSet<&'a str>,
        stack: Vec<&'a str>,
        sccs: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g[v].keys() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[w].min(t.low[v]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.index[w].min(t.low[v]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w);
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                t.sccs.push(scc);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on: BTreeSet::new(),
        stack: Vec::new(),
        sccs: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    // One cycle per component: a shortest way back to its first node.
    t.sccs
        .iter()
        .map(|scc| {
            let inside: BTreeSet<&str> = scc.iter().copied().collect();
            let start = *inside.iter().next().expect("node");
            let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            let mut end = None;
            'bfs: while let Some(v) = queue.pop_front() {
                for w in g[v].keys().map(String::as_str) {
                    if !inside.contains(w) {
                        continue;
                    }
                    if w == start {
                        end = Some(v);
                        break 'bfs;
                    }
                    if !prev.contains_key(w) {
                        prev.insert(w, v);
                        queue.push_back(w);
                    }
                }
            }
            let mut path = vec![end.expect("a cycle closes").to_string()];
            while let Some(p) = prev.get(path.last().expect("node").as_str()) {
                path.push(p.to_string());
            }
            if path.last().map(String::as_str) != Some(start) {
                path.push(start.to_string());
            }
            path.reverse();
            path
        })
        .collect()
}

/// The modules on a cycle through `v`: those `v` reaches that reach it back.
fn circle_of(g: &Graph, v: &str) -> BTreeSet<String> {
    fn reach(g: &Graph, from: &str, rev: bool) -> BTreeSet<String> {
        let mut seen = BTreeSet::from([from.to_string()]);
        let mut todo = vec![from.to_string()];
        while let Some(x) = todo.pop() {
            let next: Vec<&String> = if rev {
                g.iter()
                    .filter(|(_, out)| out.contains_key(&x))
                    .map(|(k, _)| k)
                    .collect()
            } else {
                g[&x].keys().collect()
            };
            for y in next {
                if seen.insert(y.clone()) {
                    todo.push(y.clone());
                }
            }
        }
        seen
    }
    let fwd = reach(g, v, false);
    let back = reach(g, v, true);
    fwd.intersection(&back).cloned().collect()
}

/// The modules with submodules in files: the crate root and directory modules.
fn parents(c: &Crate) -> Vec<ModPath> {
    let mut ps: BTreeSet<ModPath> = BTreeSet::new();
    for m in c.files.keys() {
        if !m.is_empty() {
            ps.insert(m[..m.len() - 1].to_vec());
        }
    }
    ps.into_iter().collect()
}

/// Each cycle found, as text naming the line behind every edge.
fn report(c: &Crate) -> Vec<String> {
    let edges = c.edges();
    let mut out = Vec::new();
    for p in parents(c) {
        let g = level_graph(&edges, &p);
        for cyc in cycles(&g) {
            let mut s = format!(
                "cycle among the modules of {}: {}",
                name(&p),
                cyc.join(" -> ")
            );
            s.push_str(&format!(" -> {}", cyc[0]));
            for (k, a) in cyc.iter().enumerate() {
                let b = &cyc[(k + 1) % cyc.len()];
                s.push_str(&format!("\n    {a} -> {b}: {}", g[a][b]));
            }
            // The whole circle, and the pairs that import each other.
            let circle = circle_of(&g, &cyc[0]);
            s.push_str(&format!(
                "\n  all {} modules of this circle: {}",
                circle.len(),
                circle.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
            for a in &circle {
                for (b, why) in &g[a] {
                    if a < b
                        && let Some(back) = g[b].get(a)
                    {
                        s.push_str(&format!("\n  {a} <-> {b}: {why}; {back}"));
                    }
                }
            }
            out.push(s);
        }
    }
    out
}

/// Layers of an acyclic graph (only: a cycle would recurse forever): a module sits one above the highest it uses.
fn layers(g: &Graph) -> Vec<Vec<String>> {
    fn depth(g: &Graph, v: &str, memo: &mut BTreeMap<String, usize>) -> usize {
        if let Some(&d) = memo.get(v) {
            return d;
        }
        let d = g[v]
            .keys()
            .map(|w| depth(g, w, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(v.to_string(), d);
        d
    }
    let mut memo = BTreeMap::new();
    let mut out: Vec<Vec<String>> = Vec::new();
    for v in g.keys() {
        let d = depth(g, v, &mut memo);
        if out.len() <= d {
            out.resize(d + 1, Vec::new());
        }
        out[d].push(v.clone());
    }
    out
}

fn read_tree(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            read_tree(&p, root, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let src = std::fs::read_to_string(&p).expect("read source");
            out.push((p.strip_prefix(root).expect("under src").to_path_buf(), src));
        }
    }
}

fn runtime_src() -> Crate {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = Vec::new();
    read_tree(&root, &root, &mut sources);
    Crate::from_sources(&sources)
}

fn m(s: &str) -> ModPath {
    s.split("::")
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn runtime_modules_have_no_import_cycle() {
    let c = runtime_src();
    let edges = c.edges();
    let found = report(&c);
    assert!(
        found.is_empty(),
        "runtime/src has import cycles:\n{}",
        found.join("\n")
    );
    let top = level_graph(&edges, &[]);
    println!("runtime/src layering, lowest first (each module uses only modules on lower lines):");
    for (k, l) in layers(&top).iter().enumerate() {
        println!("  {k}: {}", l.join(", "));
    }
    // The scanner sees the imports at all (else "no cycle" means nothing).
    for (a, b) in [
        ("communicator", "engine"),
        ("communicator", "bootstrap"),
        ("engine", "completion"),
        ("handle", "engine"),
        ("land", "handle"),
        ("error", "ids"),
        ("bootstrap", "router::cluster"),
        ("router::exec", "router::plan"),
        ("router::exec", "logging"),
    ] {
        assert!(
            edges.contains_key(&(m(a), m(b))),
            "the scan misses the import {a} -> {b}; edges found: {:?}",
            edges.keys().collect::<Vec<_>>()
        );
    }
}

/// The engine sits below the handles: it completes slots, and knows nothing
/// of the handles waiting on them.
#[test]
fn engine_does_not_depend_on_handles() {
    let edges = runtime_src().edges();
    for to in ["handle", "land", "lend", "communicator"] {
        assert!(
            !edges.contains_key(&(m("engine"), m(to))),
            "engine imports {to}: {}",
            edges[&(m("engine"), m(to))]
        );
    }
}

fn synthetic(files: &[(&str, &str)]) -> Crate {
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, s)| (PathBuf::from(p), s.to_string()))
        .collect();
    Crate::from_sources(&sources)
}

#[test]
fn finds_a_cycle_through_a_grouped_use_and_an_inline_path() {
    let c = synthetic(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        ("a.rs", "use crate::{c, b::{self, X}};\npub fn g() {}"),
        (
            "b.rs",
            "pub struct X;\nfn f() {\n    let _ = crate::a::g();\n}",
        ),
        ("c.rs", ""),
    ]);
    let found = report(&c);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("a -> b -> a"), "{}", found[0]);
    assert!(found[0].contains("b.rs:3: crate::a::g"), "{}", found[0]);
}

#[test]
fn comments_strings_and_own_tests_are_not_imports() {
    let c = synthetic(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        ("a.rs", "use crate::b::X;\npub fn g() {}"),
        (
            "b.rs",
            "//! See [`crate::a::g`].\n\
             pub struct X;\n\
             // crate::a::g();\n\
             /* use crate::a; /* nested */ crate::a::g(); */\n\
             fn f() -> &'static str { let _c = '\"'; \"crate::a::g\" }\n\
             fn r() -> &'static str { r#\"use crate::a;\"# }\n\
             #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::b::X as Y;\n}",
        ),
    ]);
    assert!(report(&c).is_empty(), "{:?}", report(&c));
    assert!(c.edges().contains_key(&(m("a"), m("b"))));
    assert!(!c.edges().contains_key(&(m("b"), m("a"))));
}

#[test]
fn finds_a_cycle_through_a_root_reexport_and_super() {
    // `crate::Thing` is `a`'s; `b` reaches `a` through the root.
    let c = synthetic(&[
        ("lib.rs", "pub mod a; mod b;\npub use a::Thing;"),
        ("a.rs", "pub struct Thing;\nfn f() { super::b::h(); }"),
        ("b.rs", "pub(crate) fn h() -> crate::Thing { todo!() }"),
    ]);
    let found = report(&c);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("a -> b -> a"), "{}", found[0]);
}

#[test]
fn finds_a_cycle_among_submodules() {
    let c = synthetic(&[
        ("lib.rs", "pub mod r; pub mod x;"),
        ("x.rs", "use crate::r::P;"),
        ("r/mod.rs", "pub mod p;\npub mod q;\npub use p::P;"),
        ("r/p.rs", "use super::q::Q;\npub struct P;"),
        ("r/q.rs", "pub struct Q;\nfn f() { let _ = super::P; }"),
    ]);
    let found = report(&c);
    // None at the top level (`r` is one module there), one inside `r`.
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("cycle among the modules of r:"),
        "{}",
        found[0]
    );
    assert!(
        found[0].contains("r::p") && found[0].contains("r::q"),
        "{}",
        found[0]
    );
    let top = level_graph(&c.edges(), &[]);
    assert!(top["x"].contains_key("r"), "{top:?}");
}
