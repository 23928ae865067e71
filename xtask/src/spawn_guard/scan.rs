//! The scanner behind the spawn guard: finds every external program a Rust
//! source file spawns, without compiling it.
//!
//! What it understands (anything else it cannot resolve is reported, never
//! skipped):
//! - `Command::new(P)` (any path prefix, e.g. `std::process::Command::new`).
//! - Wrappers: a function or closure that passes one of its parameters as
//!   the program (`Command::new(program)`, or as the program of a launcher
//!   below) becomes a wrapper, and each of its calls is a spawn of the
//!   argument in that position: `ns_cmd(ns, "openssl")`,
//!   `net.server_cmd("nginx")`, `let run = |prog: &str, ..| ..; run("ss")`.
//!   Functions are matched by name in every file, closures in their own file.
//! - The program expression `P`: a string literal; a `const`/`static` string
//!   of any scanned file; `&`, `Path::new(..)`, `PathBuf::from(..)`,
//!   `.to_string_lossy()`, `.as_ref()` around those; anything else must be
//!   listed in the guard's table of resolved expressions (by file and text).
//! - Launchers, from the literal arguments that follow in the same
//!   statement or in later `VAR.arg(..)` / `VAR.args([..])` statements of
//!   the `let VAR` the spawn is bound to: `ip netns exec NS PROG`, `timeout
//!   [-opts] DURATION PROG`, `env [-opts] [NAME=value].. PROG`, `nsenter
//!   [-opts] PROG`, `setpriv [-opts] PROG`, `sudo [-opts] PROG`, `chroot DIR
//!   PROG`; the launched program is resolved like `P` and may be a launcher
//!   itself.
//! - Shell scripts: in a file that spawns `sh` or `bash`, every `"-c"`
//!   followed by a script (literal, `format!` literal, or a `let` variable
//!   bound to one earlier in the file) is parsed as a shell script: the
//!   command words after `;`, `|`, `&&`, `||`, `&`, `$(`, backquotes,
//!   `then`/`do`/`else`, past `NAME=value` and redirections, including
//!   nested `bash -c '...'` and the launchers above. Builtins are not
//!   programs. A command word that is a variable or a `format!` placeholder
//!   is reported as unresolved.
//!
//! Not understood (and so not checked): programs started by the Python
//! scripts the tests run, and `-c` code of non-shell interpreters.

use std::collections::{BTreeMap, BTreeSet};

/// One lexical token of Rust source.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A string literal's value (escapes resolved).
    Str(String),
    /// An identifier or keyword.
    Ident(String),
    /// One punctuation character.
    Punct(char),
    /// A number or char literal (never a program).
    Other,
}

/// A token and its 1-based line.
#[derive(Debug, Clone)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// Its line in the file.
    pub line: usize,
}

/// Splits Rust source into tokens, dropping comments.
pub fn tokenize(src: &str) -> Vec<Token> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && b.get(i + 1) == Some(&'/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == 'r'
            && (b.get(i + 1) == Some(&'"') || (b.get(i + 1) == Some(&'#') && raw_start(&b, i + 1)))
        {
            let start_line = line;
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1; // the opening quote
            let mut s = String::new();
            while j < b.len() {
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == '\n' {
                    line += 1;
                }
                s.push(b[j]);
                j += 1;
            }
            out.push(Token {
                tok: Tok::Str(s),
                line: start_line,
            });
            i = j;
        } else if c == '"' || (c == 'b' && b.get(i + 1) == Some(&'"')) {
            let start_line = line;
            let mut j = if c == 'b' { i + 2 } else { i + 1 };
            let mut s = String::new();
            while j < b.len() && b[j] != '"' {
                if b[j] == '\\' {
                    let e = b.get(j + 1).copied().unwrap_or(' ');
                    match e {
                        'n' => s.push('\n'),
                        't' => s.push('\t'),
                        '\n' => {
                            line += 1;
                            j += 2;
                            while j < b.len() && b[j].is_whitespace() {
                                if b[j] == '\n' {
                                    line += 1;
                                }
                                j += 1;
                            }
                            continue;
                        }
                        other => s.push(other),
                    }
                    j += 2;
                    continue;
                }
                if b[j] == '\n' {
                    line += 1;
                }
                s.push(b[j]);
                j += 1;
            }
            out.push(Token {
                tok: Tok::Str(s),
                line: start_line,
            });
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\'') or a lifetime ('a).
            if b.get(i + 1) == Some(&'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push(Token {
                    tok: Tok::Other,
                    line,
                });
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push(Token {
                    tok: Tok::Other,
                    line,
                });
            } else {
                i += 1;
                while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Other,
                    line,
                });
            }
        } else if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < b.len() && (b[j].is_alphanumeric() || b[j] == '_') {
                j += 1;
            }
            out.push(Token {
                tok: Tok::Ident(b[i..j].iter().collect()),
                line,
            });
            i = j;
        } else if c.is_ascii_digit() {
            while i < b.len()
                && (b[i].is_alphanumeric()
                    || b[i] == '_'
                    || (b[i] == '.' && b.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Other,
                line,
            });
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

/// Whether `r#` at `i` starts a raw string (`r#"` / `r##"`), not a raw
/// identifier.
fn raw_start(b: &[char], mut i: usize) -> bool {
    while b.get(i) == Some(&'#') {
        i += 1;
    }
    b.get(i) == Some(&'"')
}

/// One scanned file.
pub struct File {
    /// Path relative to the workspace root.
    pub path: String,
    /// Its tokens.
    pub toks: Vec<Token>,
}

impl File {
    /// Tokenizes `src`.
    pub fn new(path: &str, src: &str) -> Self {
        Self {
            path: path.to_string(),
            toks: tokenize(src),
        }
    }

    fn is(&self, i: usize, t: &Tok) -> bool {
        self.toks.get(i).is_some_and(|x| &x.tok == t)
    }

    fn ident(&self, i: usize) -> Option<&str> {
        match self.toks.get(i).map(|t| &t.tok) {
            Some(Tok::Ident(s)) => Some(s),
            _ => None,
        }
    }

    fn line(&self, i: usize) -> usize {
        self.toks.get(i).map_or(0, |t| t.line)
    }

    /// Index of the token closing the bracket opened at `open`.
    fn close_of(&self, open: usize) -> usize {
        let mut depth = 0i32;
        for (k, t) in self.toks.iter().enumerate().skip(open) {
            match t.tok {
                Tok::Punct('(' | '[' | '{') => depth += 1,
                Tok::Punct(')' | ']' | '}') => {
                    depth -= 1;
                    if depth == 0 {
                        return k;
                    }
                }
                _ => {}
            }
        }
        self.toks.len()
    }

    /// Splits `open+1 .. close` at top-level commas.
    fn split_args(&self, open: usize, close: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut depth = 0i32;
        let mut start = open + 1;
        for k in open + 1..close {
            match self.toks[k].tok {
                Tok::Punct('(' | '[' | '{') => depth += 1,
                Tok::Punct(')' | ']' | '}') => depth -= 1,
                Tok::Punct('<') if depth == 0 => {}
                Tok::Punct(',') if depth == 0 => {
                    out.push((start, k));
                    start = k + 1;
                }
                _ => {}
            }
        }
        if start < close {
            out.push((start, close));
        }
        out
    }

    /// The source text of tokens `a..b`, without spaces.
    pub fn text(&self, a: usize, b: usize) -> String {
        self.toks[a..b.min(self.toks.len())]
            .iter()
            .map(|t| match &t.tok {
                Tok::Str(s) => format!("{s:?}"),
                Tok::Ident(s) => s.clone(),
                Tok::Punct(c) => c.to_string(),
                Tok::Other => "_".into(),
            })
            .collect()
    }
}

/// A function or closure with its parameters and body span.
#[derive(Debug, Clone)]
struct Scope {
    name: String,
    /// The type of the `impl` block a function is in.
    owner: Option<String>,
    params: Vec<String>,
    body: (usize, usize),
    closure: bool,
}

/// `impl` blocks: (type name, body span).
fn impls(f: &File) -> Vec<(String, (usize, usize))> {
    let mut out = Vec::new();
    for i in 0..f.toks.len() {
        if f.ident(i) != Some("impl") {
            continue;
        }
        let mut j = i + 1;
        let mut depth = 0i32;
        let mut first = None;
        let mut after_for = None;
        while j < f.toks.len() && !(depth == 0 && f.is(j, &Tok::Punct('{'))) {
            match &f.toks[j].tok {
                Tok::Punct('<') => depth += 1,
                Tok::Punct('>') => depth -= 1,
                Tok::Ident(id) if depth == 0 && id == "for" => after_for = Some(None),
                Tok::Ident(id) if depth == 0 => {
                    if let Some(None) = after_for {
                        after_for = Some(Some(id.clone()));
                    } else if first.is_none() {
                        first = Some(id.clone());
                    }
                }
                _ => {}
            }
            j += 1;
        }
        if let Some(name) = after_for.flatten().or(first) {
            out.push((name, (j, f.close_of(j))));
        }
    }
    out
}

fn scopes(f: &File) -> Vec<Scope> {
    let mut out = Vec::new();
    let n = f.toks.len();
    let impls = impls(f);
    for i in 0..n {
        if f.ident(i) == Some("fn") {
            let Some(name) = f.ident(i + 1) else { continue };
            // Skip generics to the parameter list.
            let mut p = i + 2;
            while p < n && !f.is(p, &Tok::Punct('(')) {
                p += 1;
            }
            let close = f.close_of(p);
            let params = f
                .split_args(p, close)
                .into_iter()
                .filter_map(|(a, b)| param_name(f, a, b))
                .collect();
            let mut q = close;
            while q < n && !f.is(q, &Tok::Punct('{')) && !f.is(q, &Tok::Punct(';')) {
                q += 1;
            }
            if f.is(q, &Tok::Punct('{')) {
                let owner = impls
                    .iter()
                    .filter(|(_, (a, b))| *a < i && i < *b)
                    .min_by_key(|(_, (a, b))| b - a)
                    .map(|(t, _)| t.clone());
                out.push(Scope {
                    name: name.to_string(),
                    owner,
                    params,
                    body: (q, f.close_of(q)),
                    closure: false,
                });
            }
        } else if f.ident(i) == Some("let") {
            // let NAME = [move] |params| body
            let mut j = i + 1;
            if f.ident(j) == Some("mut") {
                j += 1;
            }
            let Some(name) = f.ident(j) else { continue };
            if !f.is(j + 1, &Tok::Punct('=')) {
                continue;
            }
            let mut k = j + 2;
            if f.ident(k) == Some("move") {
                k += 1;
            }
            if !f.is(k, &Tok::Punct('|')) {
                continue;
            }
            let mut e = k + 1;
            while e < n && !f.is(e, &Tok::Punct('|')) {
                e += 1;
            }
            // Parameters between the pipes, split at commas outside brackets.
            let mut params = Vec::new();
            let mut depth = 0i32;
            let mut start = k + 1;
            for m in k + 1..=e {
                match f.toks.get(m).map(|t| &t.tok) {
                    Some(Tok::Punct('(' | '[' | '<')) => depth += 1,
                    Some(Tok::Punct(')' | ']' | '>')) => depth -= 1,
                    Some(Tok::Punct(',')) if depth == 0 => {
                        params.extend(param_name(f, start, m));
                        start = m + 1;
                    }
                    _ => {}
                }
                if m == e {
                    params.extend(param_name(f, start, m));
                }
            }
            let body = if f.is(e + 1, &Tok::Punct('{')) {
                (e + 1, f.close_of(e + 1))
            } else {
                let mut s = e + 1;
                let mut depth = 0i32;
                while s < n {
                    match f.toks[s].tok {
                        Tok::Punct('(' | '[' | '{') => depth += 1,
                        Tok::Punct(')' | ']' | '}') => depth -= 1,
                        Tok::Punct(';') if depth <= 0 => break,
                        _ => {}
                    }
                    s += 1;
                }
                (e + 1, s)
            };
            out.push(Scope {
                name: name.to_string(),
                owner: None,
                params,
                body,
                closure: true,
            });
        }
    }
    out
}

/// The parameter's name in `a..b` (`mut x: T`, `&self`, `x`), `None` for
/// `self`.
fn param_name(f: &File, a: usize, b: usize) -> Option<String> {
    (a..b)
        .filter_map(|k| f.ident(k))
        .find(|s| *s != "mut")
        .filter(|s| *s != "self")
        .map(str::to_string)
}

/// What a program expression turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Prog {
    /// A program by name or path.
    Named(String),
    /// A parameter of the enclosing function or closure `scope` (with
    /// `arity` parameters besides `self`) at `index`.
    Param {
        scope: String,
        owner: Option<String>,
        index: usize,
        arity: usize,
        closure: bool,
    },
    /// An expression the scanner cannot resolve; its text.
    Expr(String),
}

/// One spawn found: where, what, and how it was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Spawn {
    /// `path:line`.
    pub at: String,
    /// The file (for scope rules and the table of resolved expressions).
    pub file: String,
    /// The program.
    pub prog: Prog,
    /// How it was reached (`Command::new`, `ns_cmd(..)`, `sh -c`, ...).
    pub via: String,
}

/// A wrapper: calls of `name` spawn the argument at `index`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wrapper {
    /// Function or closure name.
    pub name: String,
    /// The type of its `impl` block (`None`: a free function or closure).
    pub owner: Option<String>,
    /// Argument position (without the receiver).
    pub index: usize,
    /// Number of arguments (without the receiver): calls with another
    /// count are another function of the same name.
    pub arity: usize,
    /// The file of a closure (closures are file-local); `None` for functions.
    pub file: Option<String>,
}

/// An argument of a spawned command, as far as the scanner knows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// A literal (or a `format!` literal, placeholders left in).
    Lit(String),
    /// Something else: its token span (for resolving it as a program).
    Expr(usize, usize),
    /// `.args(X)` with a non-array `X`: any number of arguments.
    Many,
}

/// Scans all files to a fixpoint of wrappers; returns every spawn.
pub fn scan(files: &[File]) -> Vec<Spawn> {
    let consts = string_consts(files);
    let mut wrappers: BTreeSet<Wrapper> = BTreeSet::new();
    loop {
        let mut spawns = Vec::new();
        for f in files {
            scan_file(f, &consts, &wrappers, &mut spawns);
        }
        let mut grown = false;
        for s in &spawns {
            if let Prog::Param {
                scope,
                owner,
                index,
                arity,
                closure,
            } = &s.prog
            {
                let w = Wrapper {
                    name: scope.clone(),
                    owner: owner.clone(),
                    index: *index,
                    arity: *arity,
                    file: closure.then(|| s.file.clone()),
                };
                grown |= wrappers.insert(w);
            }
        }
        if !grown {
            return spawns
                .into_iter()
                .filter(|s| !matches!(s.prog, Prog::Param { .. }))
                .collect();
        }
    }
}

/// `const|static NAME: &str = "value";` of every file.
fn string_consts(files: &[File]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for f in files {
        for i in 0..f.toks.len() {
            if matches!(f.ident(i), Some("const" | "static")) {
                if let (Some(name), true, true, true, Some(Tok::Str(v))) = (
                    f.ident(i + 1),
                    f.is(i + 2, &Tok::Punct(':')),
                    f.is(i + 3, &Tok::Punct('&')),
                    f.ident(i + 4) == Some("str") && f.is(i + 5, &Tok::Punct('=')),
                    f.toks.get(i + 6).map(|t| &t.tok),
                ) {
                    out.insert(name.to_string(), v.clone());
                }
            }
        }
    }
    out
}

struct Ctx<'a> {
    f: &'a File,
    consts: &'a BTreeMap<String, String>,
    scopes: Vec<Scope>,
}

fn scan_file(
    f: &File,
    consts: &BTreeMap<String, String>,
    wrappers: &BTreeSet<Wrapper>,
    out: &mut Vec<Spawn>,
) {
    let cx = Ctx {
        f,
        consts,
        scopes: scopes(f),
    };
    let n = f.toks.len();
    let mut shells = false;
    let before = out.len();
    for i in 0..n {
        // Command::new(P)
        if f.ident(i) == Some("Command")
            && f.is(i + 1, &Tok::Punct(':'))
            && f.is(i + 2, &Tok::Punct(':'))
            && f.ident(i + 3) == Some("new")
            && f.is(i + 4, &Tok::Punct('('))
        {
            let close = f.close_of(i + 4);
            let args = chain_args(f, i, close + 1);
            spawn_at(&cx, i, (i + 5, close), args, "Command::new".into(), out);
            continue;
        }
        // Wrapper calls: NAME(args) not preceded by `fn`.
        let Some(name) = f.ident(i) else { continue };
        if !f.is(i + 1, &Tok::Punct('(')) || i > 0 && f.ident(i - 1) == Some("fn") {
            continue;
        }
        // How the call is written: `.name(` (a method), `Type::name(`, or
        // `module::name(` / `name(` (a free function).
        let method = i > 0 && f.is(i - 1, &Tok::Punct('.'));
        let qualifier = (i >= 3 && f.is(i - 1, &Tok::Punct(':')) && f.is(i - 2, &Tok::Punct(':')))
            .then(|| f.ident(i - 3))
            .flatten();
        let type_qualified = qualifier.filter(|q| q.starts_with(|c: char| c.is_ascii_uppercase()));
        let fits = |w: &Wrapper| match (&w.owner, type_qualified) {
            (Some(o), Some(q)) => q == "Self" || q == o,
            (Some(_), None) => method,
            (None, Some(_)) => false,
            (None, None) => !method,
        };
        for w in wrappers
            .iter()
            .filter(|w| w.name == name && w.file.as_ref().is_none_or(|p| *p == f.path) && fits(w))
        {
            let close = f.close_of(i + 1);
            let parts = f.split_args(i + 1, close);
            if parts.len() != w.arity {
                continue;
            }
            let Some(&span) = parts.get(w.index) else {
                continue;
            };
            let args = chain_args(f, i, close + 1);
            spawn_at(&cx, i, span, args, format!("{name}(..)"), out);
        }
    }
    for s in &out[before..] {
        if let Prog::Named(p) = &s.prog {
            shells |= is_shell(p);
        }
    }
    if shells {
        for (i, script) in shell_scripts(f) {
            let via = "sh -c".to_string();
            for prog in script_programs(&script) {
                out.push(Spawn {
                    at: format!("{}:{}", f.path, f.line(i)),
                    file: f.path.clone(),
                    prog,
                    via: via.clone(),
                });
            }
        }
    }
}

fn is_shell(p: &str) -> bool {
    matches!(basename(p), "sh" | "bash" | "dash")
}

/// The last path component.
pub fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Records the spawn of the program expression `span` at token `at`, then
/// follows launchers through `args`.
fn spawn_at(
    cx: &Ctx<'_>,
    at: usize,
    span: (usize, usize),
    args: Vec<Arg>,
    via: String,
    out: &mut Vec<Spawn>,
) {
    let prog = resolve(cx, at, span);
    let here = format!("{}:{}", cx.f.path, cx.f.line(at));
    let mut rest = args;
    let mut prog = prog;
    let mut via = via;
    loop {
        out.push(Spawn {
            at: here.clone(),
            file: cx.f.path.clone(),
            prog: prog.clone(),
            via: via.clone(),
        });
        let Prog::Named(name) = &prog else { return };
        let Some((launched, after)) = launched(basename(name), &rest) else {
            return;
        };
        via = format!("{} ..", basename(name));
        prog = match launched {
            Arg::Lit(s) => Prog::Named(s),
            Arg::Expr(a, b) => resolve(cx, a, (a, b)),
            Arg::Many => Prog::Expr(format!("{name} with its arguments from a variable")),
        };
        rest = after;
    }
}

/// The program a launcher runs and the arguments after it, if `name` is a
/// launcher and its program is among `args`.
fn launched(name: &str, args: &[Arg]) -> Option<(Arg, Vec<Arg>)> {
    let lit = |a: &Arg| match a {
        Arg::Lit(s) => Some(s.clone()),
        _ => None,
    };
    let is_opt = |a: &Arg| lit(a).is_some_and(|s| s.starts_with('-'));
    let mut k = 0;
    match name {
        "ip" if args.len() >= 4
            && lit(&args[0]).as_deref() == Some("netns")
            && lit(&args[1]).as_deref() == Some("exec") =>
        {
            k = 3;
        }
        "timeout" => {
            while args.get(k).is_some_and(is_opt) {
                k += 1;
            }
            k += 1; // the duration
        }
        "env" => {
            while args
                .get(k)
                .is_some_and(|a| is_opt(a) || lit(a).is_some_and(|s| is_assignment(&s)))
            {
                k += 1;
            }
        }
        "setpriv" => {
            // Options that take a separate value (`--reuid 65534`).
            const WITH_VALUE: &[&str] = &[
                "--reuid",
                "--regid",
                "--ruid",
                "--rgid",
                "--euid",
                "--egid",
                "--groups",
                "--inh-caps",
                "--ambient-caps",
                "--bounding-set",
                "--securebits",
                "--pdeathsig",
                "--selinux-label",
                "--apparmor-profile",
            ];
            while let Some(a) = args.get(k).filter(|a| is_opt(a)) {
                let takes_value = lit(a).is_some_and(|s| WITH_VALUE.contains(&s.as_str()));
                k += if takes_value { 2 } else { 1 };
            }
        }
        "nsenter" | "sudo" | "unshare" => {
            while args.get(k).is_some_and(is_opt) {
                k += 1;
            }
        }
        "chroot" => {
            while args.get(k).is_some_and(is_opt) {
                k += 1;
            }
            k += 1; // the new root
        }
        _ => return None,
    }
    let prog = args.get(k)?.clone();
    if matches!(prog, Arg::Many) {
        return Some((prog, Vec::new()));
    }
    Some((prog, args[k + 1..].to_vec()))
}

fn is_assignment(s: &str) -> bool {
    let Some((name, _)) = s.split_once('=') else {
        return false;
    };
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// Resolves the program expression `span` found at token `at`.
fn resolve(cx: &Ctx<'_>, at: usize, span: (usize, usize)) -> Prog {
    let f = cx.f;
    let (mut a, mut b) = span;
    loop {
        let before = (a, b);
        while a < b && f.is(a, &Tok::Punct('&')) {
            a += 1;
        }
        // Path::new(X), PathBuf::from(X), OsStr::new(X)
        if b - a >= 5
            && matches!(f.ident(a), Some("Path" | "PathBuf" | "OsStr"))
            && f.is(a + 1, &Tok::Punct(':'))
            && matches!(f.ident(a + 3), Some("new" | "from"))
            && f.is(a + 4, &Tok::Punct('('))
            && f.close_of(a + 4) == b - 1
        {
            a += 5;
            b -= 1;
        }
        // X.to_string_lossy() / .as_ref() / .clone() / .as_str() / .as_os_str()
        if b - a >= 4
            && f.is(b - 1, &Tok::Punct(')'))
            && f.is(b - 2, &Tok::Punct('('))
            && matches!(
                f.ident(b - 3),
                Some("to_string_lossy" | "as_ref" | "clone" | "as_str" | "as_os_str" | "to_string")
            )
            && f.is(b - 4, &Tok::Punct('.'))
        {
            b -= 4;
        }
        if (a, b) == before {
            break;
        }
    }
    if b == a + 1 {
        match &f.toks[a].tok {
            Tok::Str(s) => return Prog::Named(s.clone()),
            Tok::Ident(id) => {
                if let Some(scope) = cx
                    .scopes
                    .iter()
                    .filter(|s| s.body.0 < at && at < s.body.1)
                    .filter(|s| s.params.iter().any(|p| p == id))
                    .min_by_key(|s| s.body.1 - s.body.0)
                {
                    let index = scope.params.iter().position(|p| p == id).unwrap_or(0);
                    return Prog::Param {
                        scope: scope.name.clone(),
                        owner: scope.owner.clone(),
                        index,
                        arity: scope.params.len(),
                        closure: scope.closure,
                    };
                }
                if let Some(v) = cx.consts.get(id) {
                    return Prog::Named(v.clone());
                }
            }
            _ => {}
        }
    }
    Prog::Expr(f.text(a, b))
}

/// The arguments added to the command created at `start` (whose call ends
/// before `after`): the rest of its statement, and when the statement is
/// `let [mut] VAR = ...`, the later `VAR.arg(..)`/`VAR.args(..)` of the
/// enclosing block.
fn chain_args(f: &File, start: usize, after: usize) -> Vec<Arg> {
    let n = f.toks.len();
    let mut args = Vec::new();
    // The rest of the expression: method calls at depth 0.
    let mut k = after;
    method_args(f, &mut k, &mut args);
    // `let [mut] VAR = <start>`?
    let mut p = start;
    while p > 0
        && matches!(f.toks[p - 1].tok, Tok::Ident(_) | Tok::Punct(':'))
        && !f.is(p - 1, &Tok::Punct('='))
    {
        p -= 1;
        if f.ident(p) == Some("let") {
            break;
        }
    }
    let var = if p >= 2 && f.is(p - 1, &Tok::Punct('=')) {
        let v = f.ident(p - 2);
        let l = if f.ident(p - 3) == Some("mut") {
            p.checked_sub(4)
        } else {
            p.checked_sub(3)
        };
        v.filter(|_| l.is_some_and(|l| f.ident(l) == Some("let")))
            .map(str::to_string)
    } else {
        None
    };
    let Some(var) = var else { return args };
    // Later statements of the block: VAR.arg(..)... until the block closes.
    let mut depth = 0i32;
    let mut q = k;
    while q < n {
        match f.toks[q].tok {
            Tok::Punct('{' | '(' | '[') => depth += 1,
            Tok::Punct('}' | ')' | ']') => {
                depth -= 1;
                if depth < 0 {
                    break;
                }
            }
            _ => {}
        }
        if f.ident(q) == Some(var.as_str())
            && f.is(q + 1, &Tok::Punct('.'))
            && (q == 0 || !f.is(q - 1, &Tok::Punct('.')))
        {
            let mut m = q + 1;
            method_args(f, &mut m, &mut args);
            q = m;
            continue;
        }
        q += 1;
    }
    args
}

/// Reads `.arg(X)` / `.args([..])` / other `.method(..)` calls from `*k`.
fn method_args(f: &File, k: &mut usize, args: &mut Vec<Arg>) {
    while f.is(*k, &Tok::Punct('.')) && f.is(*k + 2, &Tok::Punct('(')) {
        let m = f.ident(*k + 1).unwrap_or_default().to_string();
        let close = f.close_of(*k + 2);
        match m.as_str() {
            "arg" => args.push(arg_of(f, *k + 3, close)),
            "args" => {
                let inner = (*k + 3, close);
                let (a, b) = strip_ref(f, inner.0, inner.1);
                if f.is(a, &Tok::Punct('[')) && f.close_of(a) == b - 1 {
                    for (x, y) in f.split_args(a, b - 1) {
                        args.push(arg_of(f, x, y));
                    }
                } else {
                    args.push(Arg::Many);
                }
            }
            _ => {}
        }
        *k = close + 1;
    }
}

fn strip_ref(f: &File, mut a: usize, b: usize) -> (usize, usize) {
    while a < b && f.is(a, &Tok::Punct('&')) {
        a += 1;
    }
    (a, b)
}

/// One argument: a literal, a `format!` literal, or an expression.
fn arg_of(f: &File, a: usize, b: usize) -> Arg {
    let (a, b) = strip_ref(f, a, b);
    if b == a + 1 {
        if let Tok::Str(s) = &f.toks[a].tok {
            return Arg::Lit(s.clone());
        }
    }
    if let Some(s) = format_literal(f, a) {
        return Arg::Lit(s);
    }
    Arg::Expr(a, b)
}

/// The literal of `format!("..", ..)` at `a`.
fn format_literal(f: &File, a: usize) -> Option<String> {
    if f.ident(a) == Some("format")
        && f.is(a + 1, &Tok::Punct('!'))
        && f.is(a + 2, &Tok::Punct('('))
    {
        if let Some(Tok::Str(s)) = f.toks.get(a + 3).map(|t| &t.tok) {
            return Some(s.clone());
        }
    }
    None
}

/// Every `"-c"` followed by a script in `f`: (token index, script text).
/// Scripts given by variable are looked up as the nearest earlier
/// `let VAR = format!("..")` or `let VAR = ".."`.
fn shell_scripts(f: &File) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for i in 0..f.toks.len() {
        if !f.is(i, &Tok::Str("-c".into())) {
            continue;
        }
        // "-c").arg(X)  or  "-c", X
        let x = if f.is(i + 1, &Tok::Punct(')'))
            && f.is(i + 2, &Tok::Punct('.'))
            && f.ident(i + 3) == Some("arg")
        {
            i + 5
        } else if f.is(i + 1, &Tok::Punct(',')) {
            i + 2
        } else {
            continue;
        };
        let (a, _) = strip_ref(f, x, f.toks.len());
        let script = match f.toks.get(a).map(|t| &t.tok) {
            Some(Tok::Str(s)) => Some(s.clone()),
            Some(Tok::Ident(v)) => format_literal(f, a).or_else(|| let_literal(f, v, i)),
            _ => None,
        };
        out.push((
            i,
            script.unwrap_or_else(|| format!("${{unresolved script {}}}", f.text(a, a + 1))),
        ));
    }
    out
}

/// The literal bound by the nearest `let [mut] VAR = format!("..")` / `= ".."`
/// before token `before`.
fn let_literal(f: &File, var: &str, before: usize) -> Option<String> {
    (0..before).rev().find_map(|k| {
        if f.ident(k) != Some("let") {
            return None;
        }
        let j = if f.ident(k + 1) == Some("mut") {
            k + 2
        } else {
            k + 1
        };
        if f.ident(j) != Some(var) || !f.is(j + 1, &Tok::Punct('=')) {
            return None;
        }
        match f.toks.get(j + 2).map(|t| &t.tok) {
            Some(Tok::Str(s)) => Some(s.clone()),
            _ => format_literal(f, j + 2),
        }
    })
}

/// Shell builtins and keywords: never programs.
const SHELL_BUILTINS: &[&str] = &[
    "echo", "exit", "true", "false", "break", "continue", "read", "test", "[", "cd", "export",
    "set", "wait", "return", "printf", "kill", ":", ".", "source", "trap", "shift", "local",
    "unset", "eval",
];

/// The programs a shell script runs (see the module doc).
pub fn script_programs(script: &str) -> Vec<Prog> {
    let mut out = Vec::new();
    for cmd in shell_commands(script) {
        command_programs(&cmd, &mut out);
    }
    out
}

/// Programs of one simple command given as words.
fn command_programs(words: &[String], out: &mut Vec<Prog>) {
    let mut k = 0;
    while k < words.len() {
        let w = &words[k];
        let redirect = w.starts_with('<')
            || w.starts_with('>')
            || w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('>');
        if is_assignment(w)
            || redirect
            || matches!(
                w.as_str(),
                "if" | "then" | "else" | "elif" | "do" | "while" | "until" | "!" | "{" | "time"
            )
        {
            k += 1;
            continue;
        }
        break;
    }
    let Some(first) = words.get(k) else { return };
    if matches!(
        first.as_str(),
        "for" | "case" | "done" | "fi" | "esac" | "}" | "in"
    ) {
        return;
    }
    if first == "exec" {
        command_programs(&words[k + 1..], out);
        return;
    }
    if SHELL_BUILTINS.contains(&first.as_str()) {
        return;
    }
    if first.starts_with('$') || first.contains('{') {
        out.push(Prog::Expr(format!("shell command word {first}")));
        return;
    }
    out.push(Prog::Named(first.clone()));
    let rest: Vec<Arg> = words[k + 1..].iter().map(|w| Arg::Lit(w.clone())).collect();
    if is_shell(first) {
        if let Some(pos) = words[k + 1..].iter().position(|w| w == "-c") {
            if let Some(inner) = words.get(k + 2 + pos) {
                out.extend(script_programs(inner));
            }
        }
        return;
    }
    if let Some((Arg::Lit(next), _)) = launched(basename(first), &rest) {
        let from = words
            .iter()
            .skip(k + 1)
            .position(|w| *w == next)
            .map_or(words.len(), |p| k + 1 + p);
        command_programs(&words[from..], out);
    }
}

/// Splits a script into simple commands (word lists); command
/// substitutions become commands of their own.
fn shell_commands(script: &str) -> Vec<Vec<String>> {
    let c: Vec<char> = script.chars().collect();
    let mut cmds = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut i = 0;
    let flush_word = |word: &mut String, in_word: &mut bool, cur: &mut Vec<String>| {
        if *in_word {
            cur.push(std::mem::take(word));
            *in_word = false;
        }
    };
    while i < c.len() {
        let ch = c[i];
        match ch {
            '\'' => {
                let end = c[i + 1..]
                    .iter()
                    .position(|&x| x == '\'')
                    .map_or(c.len(), |p| i + 1 + p);
                word.extend(&c[i + 1..end]);
                in_word = true;
                i = end + 1;
            }
            '"' => {
                let mut j = i + 1;
                while j < c.len() && c[j] != '"' {
                    if c[j] == '\\' {
                        j += 1;
                    } else if c[j] == '$'
                        && c.get(j + 1) == Some(&'(')
                        && c.get(j + 2) != Some(&'(')
                    {
                        let end = matching_paren(&c, j + 1);
                        let inner: String = c[j + 2..end.min(c.len())].iter().collect();
                        cmds.extend(shell_commands(&inner));
                        word.extend(&c[j..=end.min(c.len() - 1)]);
                        j = end + 1;
                        continue;
                    }
                    if j < c.len() {
                        word.push(c[j]);
                    }
                    j += 1;
                }
                in_word = true;
                i = j + 1;
            }
            '$' if c.get(i + 1) == Some(&'(') && c.get(i + 2) == Some(&'(') => {
                let end = matching_paren(&c, i + 1);
                word.extend(&c[i..=end.min(c.len() - 1)]);
                in_word = true;
                i = end + 1;
            }
            '$' if c.get(i + 1) == Some(&'(') => {
                let end = matching_paren(&c, i + 1);
                let inner: String = c[i + 2..end.min(c.len())].iter().collect();
                cmds.extend(shell_commands(&inner));
                word.push_str("$(..)");
                in_word = true;
                i = end + 1;
            }
            '`' => {
                let end = c[i + 1..]
                    .iter()
                    .position(|&x| x == '`')
                    .map_or(c.len(), |p| i + 1 + p);
                let inner: String = c[i + 1..end].iter().collect();
                cmds.extend(shell_commands(&inner));
                word.push_str("`..`");
                in_word = true;
                i = end + 1;
            }
            '\\' => {
                if let Some(&n) = c.get(i + 1) {
                    word.push(n);
                    in_word = true;
                }
                i += 2;
            }
            ';' | '|' | '&' | '\n' | '(' | ')' => {
                // `2>&1`, `>&2`: part of a redirection word.
                if ch == '&' && (word.ends_with('>') || word.ends_with('<')) {
                    word.push(ch);
                    i += 1;
                    continue;
                }
                flush_word(&mut word, &mut in_word, &mut cur);
                if !cur.is_empty() {
                    cmds.push(std::mem::take(&mut cur));
                }
                i += 1;
            }
            ch if ch.is_whitespace() => {
                flush_word(&mut word, &mut in_word, &mut cur);
                i += 1;
            }
            _ => {
                word.push(ch);
                in_word = true;
                i += 1;
            }
        }
    }
    flush_word(&mut word, &mut in_word, &mut cur);
    if !cur.is_empty() {
        cmds.push(cur);
    }
    cmds
}

/// Index of the `)` matching the `(` at `open`.
fn matching_paren(c: &[char], open: usize) -> usize {
    let mut depth = 0;
    for (k, &ch) in c.iter().enumerate().skip(open) {
        if ch == '(' {
            depth += 1;
        } else if ch == ')' {
            depth -= 1;
            if depth == 0 {
                return k;
            }
        }
    }
    c.len()
}
