//! Single-point mutants of a kernel C file, found with tree-sitter-c.
//!
//! Every mutant is one edit (a byte range and its replacement) at a place
//! the parser found, so it stays valid C: an operator never splices text
//! by pattern. Kernel C is not plain C to tree-sitter (`container_of(p,
//! struct T, f)`, `__init`, `list_for_each_entry(...) stmt`, top-level
//! `BTF_ID_FLAGS(...)` lines), so the parser reads a *parse view* of the
//! file: those idioms blanked or renamed to text of the same length, which
//! keeps every byte offset valid for the real file. A mutant whose parse
//! view has more syntax errors than the original's is dropped.
//!
//! The operators, in the order `--max` deals them out:
//!
//! | name | what it does |
//! |---|---|
//! | `delete_call` | deletes a call statement (`list_del(&vml->head);`) |
//! | `delete_stmt` | deletes an assignment (`uaddr &= PAGE_MASK;`) or a guard `if` that only returns or jumps |
//! | `flip_cmp` | negates a comparison (`==`/`!=`, `<`/`>=`, `>`/`<=`) or an `if` condition |
//! | `loosen_cmp` | moves a comparison's boundary: `<`/`<=`, `>`/`>=` |
//! | `off_by_one` | drops the `± 1` of a bound (`pgoff + page_cnt - 1`), or compares against N + 1 instead of a literal N |
//! | `drop_flag` | drops one flag of an `A \| B` chain (`GFP_KERNEL \| __GFP_ZERO`) |
//! | `remove_lock` | deletes a lock or unlock call, or a `guard(...)(...)` |
//! | `change_gfp` | swaps a GFP flag (`GFP_KERNEL` → `GFP_NOWAIT`, `GFP_ATOMIC` → `GFP_KERNEL`, ...) |
//! | `early_return` | returns at a function's start (after its declarations): `return;`, `return 0;` or `return NULL;` |

use std::collections::HashSet;
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};
use tree_sitter::{Node, Parser, Tree};

/// A mutation operator.
#[derive(
    clap::ValueEnum,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Operator {
    /// Delete a call statement.
    DeleteCall,
    /// Delete an assignment or a guard `if`.
    DeleteStmt,
    /// Negate a comparison or an `if` condition.
    FlipCmp,
    /// Move a comparison's boundary (`<` ↔ `<=`, `>` ↔ `>=`).
    LoosenCmp,
    /// Off-by-one in a bound.
    OffByOne,
    /// Drop one flag from a bitmask.
    DropFlag,
    /// Remove a lock or unlock.
    RemoveLock,
    /// Change a GFP flag.
    ChangeGfp,
    /// Return early from a function.
    EarlyReturn,
}

impl Operator {
    /// Every operator, in the order `--max` deals mutants out.
    pub const ALL: [Operator; 9] = [
        Operator::DeleteCall,
        Operator::DeleteStmt,
        Operator::FlipCmp,
        Operator::LoosenCmp,
        Operator::OffByOne,
        Operator::DropFlag,
        Operator::RemoveLock,
        Operator::ChangeGfp,
        Operator::EarlyReturn,
    ];

    /// The spelling in ids, reports and `--operators`.
    pub fn name(self) -> &'static str {
        match self {
            Operator::DeleteCall => "delete_call",
            Operator::DeleteStmt => "delete_stmt",
            Operator::FlipCmp => "flip_cmp",
            Operator::LoosenCmp => "loosen_cmp",
            Operator::OffByOne => "off_by_one",
            Operator::DropFlag => "drop_flag",
            Operator::RemoveLock => "remove_lock",
            Operator::ChangeGfp => "change_gfp",
            Operator::EarlyReturn => "early_return",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One single-point mutant: `replacement` instead of `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutant {
    /// Stable id: operator, line and column (`flip_cmp-l338c12`).
    pub id: String,
    /// Which operator made it.
    pub operator: Operator,
    /// Byte range replaced in the original.
    pub start: usize,
    /// End of that range (exclusive).
    pub end: usize,
    /// What replaces it.
    pub replacement: String,
    /// 1-based line of `start`.
    pub line: usize,
    /// The function it is in.
    pub function: String,
    /// What changed, for people (`` `<` → `<=` ``).
    pub description: String,
}

impl Mutant {
    /// The mutated file.
    pub fn apply(&self, original: &str) -> String {
        let mut s = String::with_capacity(original.len() + self.replacement.len());
        s.push_str(&original[..self.start]);
        s.push_str(&self.replacement);
        s.push_str(&original[self.end..]);
        s
    }

    /// A unified diff (`diff -u`, 3 lines of context) of the mutant against
    /// `original`, with `path` in the headers as `a/PATH` and `b/PATH`.
    pub fn diff(&self, original: &str, path: &str) -> String {
        unified_diff(original, self.start, self.end, &self.replacement, path)
    }
}

/// Lines of context in [`Mutant::diff`].
const CONTEXT: usize = 3;

fn line_start(text: &str, at: usize) -> usize {
    text[..at].rfind('\n').map_or(0, |i| i + 1)
}

fn line_end(text: &str, at: usize) -> usize {
    text[at..].find('\n').map_or(text.len(), |i| at + i + 1)
}

/// The diff of one edit: the whole lines it touches, old and new, with
/// [`CONTEXT`] lines either side.
fn unified_diff(original: &str, start: usize, end: usize, replacement: &str, path: &str) -> String {
    let region_start = line_start(original, start);
    let at_line_start = end == 0 || original.as_bytes()[end - 1] == b'\n';
    // A deletion or insertion of whole lines touches no other line.
    let region_end = if at_line_start && (end > region_start || replacement.ends_with('\n')) {
        end
    } else {
        line_end(original, end)
    };
    let new_region = format!(
        "{}{}{}",
        &original[region_start..start],
        replacement,
        &original[end..region_end]
    );
    let lines = |s: &str| -> Vec<String> { s.lines().map(str::to_owned).collect() };
    let old = lines(&original[region_start..region_end]);
    let new = lines(&new_region);
    let before: Vec<&str> = original[..region_start].lines().collect();
    let after: Vec<&str> = original[region_end..].lines().collect();
    let ctx_before = &before[before.len().saturating_sub(CONTEXT)..];
    let ctx_after = &after[..after.len().min(CONTEXT)];
    let first = before.len() - ctx_before.len() + 1;
    let old_len = ctx_before.len() + old.len() + ctx_after.len();
    let new_len = ctx_before.len() + new.len() + ctx_after.len();
    // diff -u numbers an empty side by the line before it.
    let number = |len: usize| if len == 0 { first - 1 } else { first };
    let mut out = format!(
        "--- a/{path}\n+++ b/{path}\n@@ -{},{old_len} +{},{new_len} @@\n",
        number(old_len),
        number(new_len)
    );
    for l in ctx_before {
        out.push_str(&format!(" {l}\n"));
    }
    for l in &old {
        out.push_str(&format!("-{l}\n"));
    }
    for l in &new {
        out.push_str(&format!("+{l}\n"));
    }
    for l in ctx_after {
        out.push_str(&format!(" {l}\n"));
    }
    out
}

/// Declaration annotations tree-sitter-c does not know: blanked in the
/// parse view.
const ANNOTATIONS: &[&str] = &[
    "__init",
    "__exit",
    "__bpf_kfunc",
    "__user",
    "__iomem",
    "__rcu",
    "__percpu",
    "__force",
    "__must_check",
    "__always_inline",
    "noinline",
    "__maybe_unused",
    "__cold",
    "__read_mostly",
    "__ro_after_init",
    "notrace",
    "__weak",
];

/// Macros that take a type (`struct T`) among their arguments: its
/// `struct`/`union` keyword is blanked in the parse view.
const TYPE_ARG_MACROS: &str = "container_of|container_of_const|offsetof|sizeof_field";

/// Loop-like macros (`list_for_each_entry(pos, head, member) stmt`,
/// `scoped_guard(mutex, &l) { ... }`): renamed to `while` in the parse view.
const LOOP_MACROS: &str = r"\b(?:\w*for_each\w*|scoped_guard)\b";

/// The text tree-sitter-c parses for `src`: the same length, byte for
/// byte, with kernel idioms it cannot read blanked or renamed.
pub fn parse_view(src: &str) -> String {
    let mut view = src.as_bytes().to_vec();
    let blank = |view: &mut Vec<u8>, start: usize, end: usize| {
        for b in &mut view[start..end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let annotations = Regex::new(&format!(r"\b(?:{})\b", ANNOTATIONS.join("|"))).expect("regex");
    for m in annotations.find_iter(src) {
        blank(&mut view, m.start(), m.end());
    }
    let type_args = Regex::new(&format!(
        r"\b(?:{TYPE_ARG_MACROS})\s*\((?:[^,;()]*,\s*)?(struct|union)\b"
    ))
    .expect("regex");
    for c in type_args.captures_iter(src) {
        let k = c.get(1).expect("group");
        blank(&mut view, k.start(), k.end());
    }
    // Top-level macro lines without a semicolon (`BTF_ID_FLAGS(...)`).
    let macro_line = Regex::new(r"(?m)^[A-Z_][A-Z0-9_]*\(.*\)[ \t]*$").expect("regex");
    for m in macro_line.find_iter(src) {
        blank(&mut view, m.start(), m.end());
    }
    let loops = Regex::new(&format!(r"{LOOP_MACROS}\s*\(")).expect("regex");
    for m in loops.find_iter(src) {
        let name_end = m.start() + src[m.start()..].find(['(', ' ', '\t']).unwrap_or(0);
        if name_end - m.start() >= "while".len() {
            view[m.start()..m.start() + 5].copy_from_slice(b"while");
            blank(&mut view, m.start() + 5, name_end);
        }
    }
    String::from_utf8(view).expect("only ASCII bytes were replaced")
}

/// Parses `src` (through its [`parse_view`]).
pub fn parse(src: &str) -> Tree {
    let mut p = Parser::new();
    p.set_language(&tree_sitter_c::LANGUAGE.into())
        .expect("tree-sitter-c matches the tree-sitter runtime");
    p.parse(parse_view(src), None)
        .expect("no timeout or cancellation is set")
}

/// ERROR and MISSING nodes in `tree`.
pub fn syntax_errors(tree: &Tree) -> usize {
    fn count(n: Node) -> usize {
        let own = usize::from(n.is_error() || n.is_missing());
        if !n.has_error() {
            return own;
        }
        let mut c = n.walk();
        own + n.children(&mut c).map(count).sum::<usize>()
    }
    count(tree.root_node())
}

/// Every mutant of `src` by `operators` (all when empty), in operator order
/// then file order, each a valid parse; identical results are kept once.
pub fn generate(src: &str, operators: &[Operator]) -> Vec<Mutant> {
    let tree = parse(src);
    let errors = syntax_errors(&tree);
    let mut found = Vec::new();
    for f in functions(tree.root_node(), src) {
        for op in Operator::ALL {
            if operators.is_empty() || operators.contains(&op) {
                mutate_function(op, &f, src, &mut found);
            }
        }
    }
    found.sort_by_key(|m: &Mutant| (m.operator, m.start, m.end));
    let mut seen = HashSet::new();
    let mut ids = HashSet::new();
    found
        .into_iter()
        .filter(|m| seen.insert(m.apply(src)))
        .filter(|m| syntax_errors(&parse(&m.apply(src))) <= errors)
        .map(|mut m| {
            let mut id = m.id.clone();
            let mut n = 2;
            while !ids.insert(id.clone()) {
                id = format!("{}-{n}", m.id);
                n += 1;
            }
            m.id = id;
            m
        })
        .collect()
}

/// `--max`: up to `max` mutants spread over the operators. The quota is
/// dealt round-robin, one per operator in [`Operator::ALL`] order, so each
/// gets an equal share where it has enough; each operator's share is
/// spread evenly over its mutants in file order. The result comes
/// round-robin too, so a run cut short still covers every operator.
pub fn select(all: &[Mutant], max: Option<usize>) -> Vec<Mutant> {
    let groups: Vec<Vec<&Mutant>> = Operator::ALL
        .iter()
        .map(|op| all.iter().filter(|m| m.operator == *op).collect())
        .collect();
    let total: usize = groups.iter().map(Vec::len).sum();
    let want = max.unwrap_or(total).min(total);
    let mut quota = vec![0usize; groups.len()];
    let mut dealt = 0;
    while dealt < want {
        for (q, g) in quota.iter_mut().zip(&groups) {
            if dealt < want && *q < g.len() {
                *q += 1;
                dealt += 1;
            }
        }
    }
    let picked: Vec<Vec<&Mutant>> = groups
        .iter()
        .zip(&quota)
        .map(|(g, &k)| (0..k).map(|j| g[(2 * j + 1) * g.len() / (2 * k)]).collect())
        .collect();
    let rounds = quota.iter().copied().max().unwrap_or(0);
    (0..rounds)
        .flat_map(|r| picked.iter().filter_map(move |p| p.get(r)))
        .map(|m| (*m).clone())
        .collect()
}

/// A function definition and what the operators need of it.
struct Function<'t> {
    name: String,
    body: Node<'t>,
    /// The value `early_return` returns (`None`: `return;`), or no
    /// mutant at all (a struct returned by value).
    ret: Option<Option<&'static str>>,
}

fn functions<'t>(root: Node<'t>, src: &str) -> Vec<Function<'t>> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        if n.kind() == "function_definition" {
            if let (Some(body), Some(decl)) = (
                n.child_by_field_name("body"),
                n.child_by_field_name("declarator"),
            ) {
                let ty = n.child_by_field_name("type").map(|t| text(t, src));
                let pointer = decl.kind() == "pointer_declarator";
                let ret = match ty {
                    _ if pointer => Some(Some("NULL")),
                    Some("void") => Some(None),
                    Some(t) if t.starts_with("struct") || t.starts_with("union") => None,
                    _ => Some(Some("0")),
                };
                out.push(Function {
                    name: declared_name(decl, src),
                    body,
                    ret,
                });
            }
            continue;
        }
        let mut c = n.walk();
        let kids: Vec<Node> = n.children(&mut c).collect();
        stack.extend(kids.into_iter().rev());
    }
    out.reverse();
    out.sort_by_key(|f| f.body.start_byte());
    out
}

fn declared_name(decl: Node, src: &str) -> String {
    let mut n = decl;
    loop {
        if n.kind() == "identifier" {
            return text(n, src).to_owned();
        }
        match n.child_by_field_name("declarator") {
            Some(d) => n = d,
            None => return text(n, src).to_owned(),
        }
    }
}

fn text<'s>(n: Node, src: &'s str) -> &'s str {
    &src[n.byte_range()]
}

/// Every node under `n` (itself included), in document order, skipping
/// what tree-sitter could not parse.
fn descendants(n: Node) -> Vec<Node> {
    let mut out = Vec::new();
    let mut stack = vec![n];
    while let Some(n) = stack.pop() {
        if n.is_error() || n.is_missing() {
            continue;
        }
        out.push(n);
        let mut c = n.walk();
        let kids: Vec<Node> = n.children(&mut c).collect();
        stack.extend(kids.into_iter().rev());
    }
    out
}

struct Ctx<'a> {
    op: Operator,
    src: &'a str,
    function: &'a str,
}

impl Ctx<'_> {
    fn mutant(
        &self,
        at: Node,
        start: usize,
        end: usize,
        replacement: String,
        what: String,
    ) -> Mutant {
        let p = at.start_position();
        Mutant {
            id: format!("{}-l{}c{}", self.op, p.row + 1, p.column + 1),
            operator: self.op,
            start,
            end,
            replacement,
            line: p.row + 1,
            function: self.function.to_owned(),
            description: what,
        }
    }

    /// Deletes statement `s`: its whole lines when it has them to itself
    /// in a block, else an empty statement in its place (the body of an
    /// `if` or loop must stay a statement).
    fn delete(&self, s: Node, what: String) -> Mutant {
        let src = self.src;
        let (start, end) = (s.start_byte(), s.end_byte());
        let ls = line_start(src, start);
        let le = line_end(src, end);
        let alone = src[ls..start].trim().is_empty() && src[end..le].trim().is_empty();
        let in_block = s.parent().is_some_and(|p| p.kind() == "compound_statement");
        if alone && in_block {
            self.mutant(s, ls, le, String::new(), what)
        } else {
            self.mutant(s, start, end, ";".into(), what)
        }
    }
}

fn mutate_function(op: Operator, f: &Function, src: &str, out: &mut Vec<Mutant>) {
    let cx = Ctx {
        op,
        src,
        function: &f.name,
    };
    if op == Operator::EarlyReturn {
        out.extend(early_return(&cx, f));
        return;
    }
    for n in descendants(f.body) {
        let m: Vec<Mutant> = match op {
            Operator::DeleteCall => delete_call(&cx, n).into_iter().collect(),
            Operator::DeleteStmt => delete_stmt(&cx, n).into_iter().collect(),
            Operator::FlipCmp => flip_cmp(&cx, n).into_iter().collect(),
            Operator::LoosenCmp => loosen_cmp(&cx, n).into_iter().collect(),
            Operator::OffByOne => off_by_one(&cx, n).into_iter().collect(),
            Operator::DropFlag => drop_flag(&cx, n),
            Operator::RemoveLock => remove_lock(&cx, n).into_iter().collect(),
            Operator::ChangeGfp => change_gfp(&cx, n).into_iter().collect(),
            Operator::EarlyReturn => Vec::new(),
        };
        out.extend(m);
    }
}

/// The call of an expression statement (`f(x);`), if it is one.
fn statement_call(n: Node) -> Option<Node> {
    if n.kind() != "expression_statement" {
        return None;
    }
    n.named_child(0).filter(|c| c.kind() == "call_expression")
}

/// The name a call calls: `f` of `f(x)`, `guard` of `guard(mutex)(&l)`.
fn callee<'s>(call: Node, src: &'s str) -> &'s str {
    let mut f = call;
    while f.kind() == "call_expression" {
        match f.child_by_field_name("function") {
            Some(inner) => f = inner,
            None => break,
        }
    }
    text(f, src)
}

/// Suffixes of lock and unlock functions (`mutex_lock`, `spin_unlock_irqrestore`).
const LOCK_SUFFIXES: &[&str] = &[
    "_lock",
    "_unlock",
    "_lock_irq",
    "_unlock_irq",
    "_lock_irqsave",
    "_unlock_irqrestore",
    "_lock_bh",
    "_unlock_bh",
    "_lock_nested",
];
/// Lock and unlock functions no suffix gives away.
const LOCK_NAMES: &[&str] = &[
    "guard",
    "down_read",
    "up_read",
    "down_write",
    "up_write",
    "lock_page",
    "unlock_page",
];

fn is_lock(name: &str) -> bool {
    LOCK_NAMES.contains(&name) || LOCK_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// `delete_call`: a call statement goes (locks are `remove_lock`'s).
fn delete_call(cx: &Ctx, n: Node) -> Option<Mutant> {
    let call = statement_call(n)?;
    let name = callee(call, cx.src);
    if is_lock(name) {
        return None;
    }
    Some(cx.delete(n, format!("delete call `{}`", one_line(text(n, cx.src)))))
}

/// Statements that end a guard `if`'s body.
const JUMPS: &[&str] = &["return_statement", "goto_statement"];

/// `delete_stmt`: an assignment statement, or a guard `if` (no `else`,
/// its body only a `return` or `goto`), goes.
fn delete_stmt(cx: &Ctx, n: Node) -> Option<Mutant> {
    match n.kind() {
        "expression_statement" => {
            let e = n.named_child(0)?;
            matches!(e.kind(), "assignment_expression" | "update_expression")
                .then(|| cx.delete(n, format!("delete `{}`", one_line(text(n, cx.src)))))
        }
        "if_statement" => {
            if n.child_by_field_name("alternative").is_some() {
                return None;
            }
            let mut body = n.child_by_field_name("consequence")?;
            if body.kind() == "compound_statement" {
                if body.named_child_count() != 1 {
                    return None;
                }
                body = body.named_child(0)?;
            }
            JUMPS.contains(&body.kind()).then(|| {
                let cond = n
                    .child_by_field_name("condition")
                    .map_or("", |c| text(c, cx.src));
                cx.delete(n, format!("delete the guard `if {}`", one_line(cond)))
            })
        }
        _ => None,
    }
}

/// The negation of each comparison operator.
const NEGATED: &[(&str, &str)] = &[
    ("==", "!="),
    ("!=", "=="),
    ("<", ">="),
    (">=", "<"),
    (">", "<="),
    ("<=", ">"),
];
/// Each relational operator with its boundary moved.
const LOOSENED: &[(&str, &str)] = &[("<", "<="), ("<=", "<"), (">", ">="), (">=", ">")];

fn binary_op<'s>(n: Node<'s>, src: &'s str) -> Option<(Node<'s>, &'s str)> {
    if n.kind() != "binary_expression" {
        return None;
    }
    let op = n.child_by_field_name("operator")?;
    Some((op, text(op, src)))
}

fn swap_op(cx: &Ctx, n: Node, table: &[(&str, &str)]) -> Option<Mutant> {
    let (op, spelled) = binary_op(n, cx.src)?;
    let (_, to) = table.iter().find(|(from, _)| *from == spelled)?;
    Some(cx.mutant(
        op,
        op.start_byte(),
        op.end_byte(),
        (*to).to_owned(),
        format!("`{spelled}` → `{to}` in `{}`", one_line(text(n, cx.src))),
    ))
}

/// `flip_cmp`: a comparison negated; an `if` whose condition is not a
/// comparison gets `!` (or loses it).
fn flip_cmp(cx: &Ctx, n: Node) -> Option<Mutant> {
    if n.kind() != "if_statement" {
        return swap_op(cx, n, NEGATED);
    }
    let paren = n.child_by_field_name("condition")?;
    let cond = paren.named_child(0)?;
    if binary_op(cond, cx.src).is_some_and(|(_, o)| NEGATED.iter().any(|(f, _)| *f == o)) {
        return None;
    }
    let inner = text(cond, cx.src);
    let negated = match cond.kind() {
        "unary_expression" if inner.starts_with('!') => {
            let arg = cond.child_by_field_name("argument")?;
            text(arg, cx.src).to_owned()
        }
        "identifier" | "field_expression" | "call_expression" | "parenthesized_expression" => {
            format!("!{inner}")
        }
        _ => format!("!({inner})"),
    };
    Some(cx.mutant(
        cond,
        cond.start_byte(),
        cond.end_byte(),
        negated.clone(),
        format!("`if ({})` → `if ({})`", one_line(inner), one_line(&negated)),
    ))
}

/// `loosen_cmp`: `<` ↔ `<=`, `>` ↔ `>=`.
fn loosen_cmp(cx: &Ctx, n: Node) -> Option<Mutant> {
    swap_op(cx, n, LOOSENED)
}

/// `off_by_one`: `X ± 1` becomes `X`; a comparison against a literal N
/// compares against N + 1.
fn off_by_one(cx: &Ctx, n: Node) -> Option<Mutant> {
    let (_, op) = binary_op(n, cx.src)?;
    let left = n.child_by_field_name("left")?;
    let right = n.child_by_field_name("right")?;
    let is_one = |x: Node| x.kind() == "number_literal" && text(x, cx.src) == "1";
    if (op == "-" || op == "+") && is_one(right) {
        let kept = text(left, cx.src);
        return Some(cx.mutant(
            right,
            n.start_byte(),
            n.end_byte(),
            kept.to_owned(),
            format!("`{}` → `{}`", one_line(text(n, cx.src)), one_line(kept)),
        ));
    }
    if !NEGATED.iter().any(|(f, _)| *f == op) {
        return None;
    }
    let lit = [right, left]
        .into_iter()
        .find(|x| x.kind() == "number_literal")?;
    let value: u64 = text(lit, cx.src).parse().ok()?;
    let bumped = (value + 1).to_string();
    Some(cx.mutant(
        lit,
        lit.start_byte(),
        lit.end_byte(),
        bumped.clone(),
        format!(
            "bound {value} → {bumped} in `{}`",
            one_line(text(n, cx.src))
        ),
    ))
}

/// The operands of an `|` chain rooted at `n` (`A | B | C`), left to right.
fn or_chain<'t>(n: Node<'t>, src: &str, out: &mut Vec<Node<'t>>) {
    match binary_op(n, src) {
        Some((_, "|")) => {
            if let (Some(l), Some(r)) = (
                n.child_by_field_name("left"),
                n.child_by_field_name("right"),
            ) {
                or_chain(l, src, out);
                or_chain(r, src, out);
            }
        }
        _ => out.push(n),
    }
}

/// A flag's spelling: an upper-case identifier (`VM_SPARSE`, `__GFP_ZERO`).
fn is_flag(n: Node, src: &str) -> bool {
    n.kind() == "identifier"
        && text(n, src)
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// `drop_flag`: each flag of an `|` chain of flags, dropped in turn.
fn drop_flag(cx: &Ctx, n: Node) -> Vec<Mutant> {
    if !matches!(binary_op(n, cx.src), Some((_, "|")))
        || n.parent()
            .and_then(|p| binary_op(p, cx.src))
            .is_some_and(|(_, o)| o == "|")
    {
        return Vec::new();
    }
    let mut flags = Vec::new();
    or_chain(n, cx.src, &mut flags);
    if flags.len() < 2 || !flags.iter().all(|f| is_flag(*f, cx.src)) {
        return Vec::new();
    }
    (0..flags.len())
        .map(|i| {
            // The flag and the `|` joining it to its neighbour.
            let (start, end) = if i == 0 {
                (flags[0].start_byte(), flags[1].start_byte())
            } else {
                (flags[i - 1].end_byte(), flags[i].end_byte())
            };
            cx.mutant(
                flags[i],
                start,
                end,
                String::new(),
                format!(
                    "drop `{}` from `{}`",
                    text(flags[i], cx.src),
                    one_line(text(n, cx.src))
                ),
            )
        })
        .collect()
}

/// `remove_lock`: a lock or unlock call statement goes.
fn remove_lock(cx: &Ctx, n: Node) -> Option<Mutant> {
    let call = statement_call(n)?;
    is_lock(callee(call, cx.src))
        .then(|| cx.delete(n, format!("remove `{}`", one_line(text(n, cx.src)))))
}

/// What `change_gfp` makes of each GFP flag: an allocation that may sleep
/// made one that may not (and fails instead of reclaiming), and the other
/// way round; memcg accounting lost.
const GFP_SWAPS: &[(&str, &str)] = &[
    ("GFP_KERNEL", "GFP_NOWAIT"),
    ("GFP_KERNEL_ACCOUNT", "GFP_KERNEL"),
    ("GFP_ATOMIC", "GFP_KERNEL"),
    ("GFP_NOWAIT", "GFP_KERNEL"),
    ("GFP_USER", "GFP_KERNEL"),
];

/// `change_gfp`: a GFP flag swapped ([`GFP_SWAPS`]).
fn change_gfp(cx: &Ctx, n: Node) -> Option<Mutant> {
    if n.kind() != "identifier" {
        return None;
    }
    let name = text(n, cx.src);
    let (_, to) = GFP_SWAPS.iter().find(|(from, _)| *from == name)?;
    Some(cx.mutant(
        n,
        n.start_byte(),
        n.end_byte(),
        (*to).to_owned(),
        format!("`{name}` → `{to}`"),
    ))
}

/// `early_return`: `return;` (or `return 0;`, `return NULL;`) before the
/// first statement after the declarations. Functions that start with a
/// `return` already, or return a struct by value, get none.
fn early_return(cx: &Ctx, f: &Function) -> Option<Mutant> {
    let value = f.ret?;
    let mut c = f.body.walk();
    let first = f
        .body
        .named_children(&mut c)
        .find(|s| s.kind() != "declaration" && s.kind() != "comment")?;
    if first.kind() == "return_statement" {
        return None;
    }
    let stmt = match value {
        Some(v) => format!("return {v};"),
        None => "return;".to_owned(),
    };
    let src = cx.src;
    let ls = line_start(src, first.start_byte());
    let indent = &src[ls..first.start_byte()];
    let (at, replacement) = if indent.trim().is_empty() {
        (ls, format!("{indent}{stmt}\n"))
    } else {
        (first.start_byte(), format!("{stmt} "))
    };
    Some(cx.mutant(
        first,
        at,
        at,
        replacement,
        format!("`{stmt}` at the start of `{}`", f.name),
    ))
}

/// `s` on one line, whitespace runs squeezed, cut at 80 characters.
pub fn one_line(s: &str) -> String {
    let squeezed = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match squeezed.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &squeezed[..i]),
        None => squeezed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernel-style C written for these tests (the idioms of arena.c:
    /// container_of with a type, guard(), list_for_each_entry, __bpf_kfunc,
    /// top-level BTF macro lines).
    const FIXTURE: &str = include_str!("../../../tests/fixtures/mutate/arena_like.c");

    fn of(op: Operator, src: &str) -> Vec<Mutant> {
        generate(src, &[op])
    }

    fn applied(op: Operator, src: &str) -> Vec<String> {
        of(op, src).iter().map(|m| m.apply(src)).collect()
    }

    #[test]
    fn the_fixture_parses_cleanly_through_its_view() {
        assert_eq!(syntax_errors(&parse(FIXTURE)), 0, "{}", parse_view(FIXTURE));
        assert_eq!(parse_view(FIXTURE).len(), FIXTURE.len());
    }

    #[test]
    fn every_mutant_of_the_fixture_reparses_without_errors() {
        let all = generate(FIXTURE, &[]);
        for op in Operator::ALL {
            assert!(
                all.iter().any(|m| m.operator == op),
                "{op} found nothing in the fixture"
            );
        }
        for m in &all {
            assert_eq!(syntax_errors(&parse(&m.apply(FIXTURE))), 0, "{m:?}");
        }
        let ids: HashSet<_> = all.iter().map(|m| &m.id).collect();
        assert_eq!(ids.len(), all.len(), "ids are unique");
        assert_eq!(all, generate(FIXTURE, &[]), "deterministic");
    }

    /// The real 6.12 arena.c, where `lab kernel source` left it.
    #[test]
    fn every_mutant_of_the_cached_6_12_arena_c_reparses() {
        let Some(file) = std::fs::read_dir(arena_images::cache::root().join("kernel-src"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path().join("kernel/bpf/arena.c"))
            .find(|p| p.is_file())
        else {
            eprintln!("SKIPPED: no linux-source unpacked in the cache");
            return;
        };
        let src = std::fs::read_to_string(&file).unwrap();
        assert_eq!(syntax_errors(&parse(&src)), 0, "{}", file.display());
        let all = generate(&src, &[]);
        for op in Operator::ALL {
            assert!(all.iter().any(|m| m.operator == op), "{op}");
        }
        for m in &all {
            assert_eq!(syntax_errors(&parse(&m.apply(&src))), 0, "{m:?}");
        }
    }

    #[test]
    fn delete_call_removes_the_line_and_leaves_locks_alone() {
        let src = "void f(struct s *p)\n{\n\tmutex_lock(&p->l);\n\tlist_del(&p->n);\n\tmutex_unlock(&p->l);\n}\n";
        assert_eq!(
            applied(Operator::DeleteCall, src),
            ["void f(struct s *p)\n{\n\tmutex_lock(&p->l);\n\tmutex_unlock(&p->l);\n}\n"]
        );
        // The body of an `if` stays a statement.
        let src = "void f(int x)\n{\n\tif (x)\n\t\tkfree(p);\n}\n";
        assert_eq!(
            applied(Operator::DeleteCall, src),
            ["void f(int x)\n{\n\tif (x)\n\t\t;\n}\n"]
        );
        assert!(of(Operator::DeleteCall, "int f(void)\n{\n\treturn g();\n}\n").is_empty());
    }

    #[test]
    fn delete_stmt_takes_assignments_and_guard_ifs() {
        let src = "int f(long a)\n{\n\ta &= MASK;\n\tif (a > 4)\n\t\treturn -EINVAL;\n\tif (a)\n\t\tg();\n\treturn a;\n}\n";
        assert_eq!(
            applied(Operator::DeleteStmt, src),
            [
                "int f(long a)\n{\n\tif (a > 4)\n\t\treturn -EINVAL;\n\tif (a)\n\t\tg();\n\treturn a;\n}\n",
                "int f(long a)\n{\n\ta &= MASK;\n\tif (a)\n\t\tg();\n\treturn a;\n}\n",
            ]
        );
        // An `if` with an `else` is no guard; a call is `delete_call`'s.
        let none = "int f(long a)\n{\n\tif (a)\n\t\treturn 1;\n\telse\n\t\treturn 2;\n\tg(a);\n}\n";
        assert!(of(Operator::DeleteStmt, none).is_empty());
    }

    #[test]
    fn flip_cmp_negates_comparisons_and_conditions() {
        let src = "int f(int a, int *p)\n{\n\tif (a == 1)\n\t\treturn 1;\n\tif (!p)\n\t\treturn 2;\n\tif (a & 4)\n\t\treturn 3;\n\treturn 0;\n}\n";
        let got = applied(Operator::FlipCmp, src);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].contains("if (a != 1)"));
        assert!(got[1].contains("if (p)"));
        assert!(got[2].contains("if (!(a & 4))"));
        assert!(of(Operator::FlipCmp, "int f(int a)\n{\n\treturn a + 1;\n}\n").is_empty());
    }

    #[test]
    fn loosen_cmp_moves_boundaries_only() {
        let src = "int f(int a, int b)\n{\n\treturn a < b && a >= 2 && a == b;\n}\n";
        let got = applied(Operator::LoosenCmp, src);
        assert_eq!(got.len(), 2);
        assert!(got[0].contains("a <= b && a >= 2"));
        assert!(got[1].contains("a < b && a > 2"));
        assert!(of(
            Operator::LoosenCmp,
            "int f(int a)\n{\n\treturn a == 1;\n}\n"
        )
        .is_empty());
    }

    #[test]
    fn off_by_one_drops_a_unit_or_bumps_a_literal_bound() {
        let src = "int f(long p, long n)\n{\n\tg(p, p + n - 1);\n\tif (n > 1)\n\t\treturn 1;\n\treturn 0;\n}\n";
        let got = applied(Operator::OffByOne, src);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("g(p, p + n);"));
        assert!(got[1].contains("if (n > 2)"));
        assert!(of(Operator::OffByOne, "int f(long n)\n{\n\treturn n * 2;\n}\n").is_empty());
    }

    #[test]
    fn drop_flag_drops_each_flag_of_a_chain() {
        let src = "void f(void)\n{\n\tg(A | B | C);\n\th(a | b);\n}\n";
        assert_eq!(
            applied(Operator::DropFlag, src),
            [
                "void f(void)\n{\n\tg(B | C);\n\th(a | b);\n}\n",
                "void f(void)\n{\n\tg(A | C);\n\th(a | b);\n}\n",
                "void f(void)\n{\n\tg(A | B);\n\th(a | b);\n}\n",
            ]
        );
    }

    #[test]
    fn remove_lock_removes_locks_unlocks_and_guards() {
        let src = "void f(struct s *p)\n{\n\tguard(mutex)(&p->l);\n\tspin_lock_irqsave(&p->s, fl);\n\tg();\n\tspin_unlock_irqrestore(&p->s, fl);\n}\n";
        let got = applied(Operator::RemoveLock, src);
        assert_eq!(got.len(), 3);
        assert!(!got[0].contains("guard"));
        assert!(!got[1].contains("spin_lock_irqsave") && got[1].contains("spin_unlock"));
        assert!(!got[2].contains("spin_unlock"));
        assert!(of(Operator::RemoveLock, "void f(void)\n{\n\tg();\n}\n").is_empty());
    }

    #[test]
    fn change_gfp_swaps_gfp_flags() {
        let src = "void f(void)\n{\n\tp = kmalloc(8, GFP_KERNEL | __GFP_ZERO);\n\tq = kmalloc(8, GFP_ATOMIC);\n}\n";
        let got = applied(Operator::ChangeGfp, src);
        assert_eq!(got.len(), 2);
        assert!(got[0].contains("kmalloc(8, GFP_NOWAIT | __GFP_ZERO)"));
        assert!(got[1].contains("kmalloc(8, GFP_KERNEL);"));
        assert!(of(
            Operator::ChangeGfp,
            "void f(void)\n{\n\tg(__GFP_ZERO);\n}\n"
        )
        .is_empty());
    }

    #[test]
    fn early_return_returns_what_the_type_needs_after_declarations() {
        let src = "static void *a(int x)\n{\n\tint y;\n\n\tg(x);\n\treturn 0;\n}\nstatic void b(void)\n{\n\tg(1);\n}\nstatic long c(void)\n{\n\treturn -1;\n}\nstatic int d(void)\n{\n\tg(2);\n\treturn 0;\n}\n";
        let got = of(Operator::EarlyReturn, src);
        let texts: Vec<_> = got.iter().map(|m| m.replacement.as_str()).collect();
        assert_eq!(texts, ["\treturn NULL;\n", "\treturn;\n", "\treturn 0;\n"]);
        assert!(got[0]
            .apply(src)
            .contains("\tint y;\n\n\treturn NULL;\n\tg(x);"));
    }

    #[test]
    fn diff_is_a_unified_diff_of_the_touched_lines() {
        let src = "a\nb\nc\nint f(int x)\n{\n\tif (x < 1)\n\t\treturn 0;\n\treturn 1;\n}\n";
        let m = &of(Operator::LoosenCmp, src)[0];
        assert_eq!(
            m.diff(src, "k.c"),
            "--- a/k.c\n+++ b/k.c\n@@ -3,7 +3,7 @@\n c\n int f(int x)\n {\n-\tif (x < 1)\n+\tif (x <= 1)\n \t\treturn 0;\n \treturn 1;\n }\n"
        );
        let m = &of(Operator::EarlyReturn, src)[0];
        assert_eq!(
            m.diff(src, "k.c"),
            "--- a/k.c\n+++ b/k.c\n@@ -3,6 +3,7 @@\n c\n int f(int x)\n {\n+\treturn 0;\n \tif (x < 1)\n \t\treturn 0;\n \treturn 1;\n"
        );
    }

    #[test]
    fn max_spreads_over_operators_round_robin() {
        let all = generate(FIXTURE, &[]);
        let picked = select(&all, Some(12));
        assert_eq!(picked.len(), 12);
        // The first round has one of each operator, in order.
        let first: Vec<_> = picked.iter().take(9).map(|m| m.operator).collect();
        assert_eq!(first, Operator::ALL);
        assert_eq!(picked, select(&all, Some(12)), "deterministic");
        // Within an operator, the picks spread over the file: one from the
        // middle, two from the quarters.
        let of_op = |op| -> (Vec<&Mutant>, Vec<&Mutant>) {
            (
                all.iter().filter(|m| m.operator == op).collect(),
                picked.iter().filter(|m| m.operator == op).collect(),
            )
        };
        let (loosen, picked_loosen) = of_op(Operator::LoosenCmp);
        assert_eq!(picked_loosen, [loosen[loosen.len() / 2]]);
        let (flips, picked_flips) = of_op(Operator::FlipCmp);
        assert_eq!(
            picked_flips,
            [flips[flips.len() / 4], flips[3 * flips.len() / 4]]
        );
        assert_eq!(select(&all, None).len(), all.len());
        assert_eq!(select(&all, Some(10_000)).len(), all.len());
    }
}
