//! Custom conditions: evalexpr expressions compiled once at load time, read-only, with
//! their regular expressions compiled up front, and (where they cannot fail) into typed trees
//! over event fields that answer without evalexpr's tree walker.

mod compile;
mod context;
mod locate;
mod view;

pub(crate) use compile::Guard;
pub use context::Evaluator;
pub(crate) use view::{EventView, Field, FieldSet};

use std::collections::HashMap;
use std::fmt;

use evalexpr::{EvalexprError, Node, Operator, Value};
use regex_automata::meta::{self, Regex};

/// Longest accepted condition, in bytes. It also bounds evalexpr's recursive evaluation and
/// its quadratic parsing of unary chains.
pub const MAX_CONDITION_BYTES: usize = 4 * 1024;

/// Deepest accepted nesting of parentheses plus unary operators. evalexpr parses, evaluates
/// and drops trees recursively; in a debug build 2,048 nested `!` already overflow a 2 MiB
/// thread stack (a tokio worker's), so conditions stay far below that.
pub const MAX_CONDITION_NESTING: usize = 256;

/// Name of the function whose regular expressions are compiled at load time.
pub const REGEX_MATCHES: &str = "str::regex_matches";

/// Largest compiled form of one constant regular expression, in bytes (each of its automata):
/// compiling one costs at most about a millisecond. `\w{5}` fits; `\w{6}` (Unicode word
/// characters) does not, `[A-Za-z0-9_]{64}` does.
pub const MAX_REGEX_BYTES: usize = 256 * 1024;

/// Heap that the constant regular expressions of all of a policy's conditions may use
/// together, as the regex engine counts it (a short literal pattern takes a few KiB, one at
/// [`MAX_REGEX_BYTES`] about 300 KiB). Without it a document of 100 KB could make its reader
/// compile 1,000 rules of large patterns: seconds of CPU and gigabytes.
pub const MAX_POLICY_REGEX_BYTES: usize = 16 * 1024 * 1024;

/// What is left of [`MAX_POLICY_REGEX_BYTES`] while a policy's conditions compile
/// ([`Condition::compile_within`]).
#[derive(Debug, Clone)]
pub struct RegexBudget {
    total: usize,
    spent: usize,
    exhausted: bool,
}

impl Default for RegexBudget {
    fn default() -> Self {
        Self::new(MAX_POLICY_REGEX_BYTES)
    }
}

impl RegexBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self {
            total: bytes,
            spent: 0,
            exhausted: false,
        }
    }

    /// Whether a condition went past it: later conditions compile no regular expressions
    /// (their policy is refused already, and reading it stays bounded).
    pub fn is_exhausted(&self) -> bool {
        self.exhausted
    }

    /// Bytes the compiled regular expressions use so far.
    pub fn spent(&self) -> usize {
        self.spent
    }
}

/// A compiled, read-only custom condition.
///
/// ```
/// use policy_engine::Condition;
/// let c = Condition::compile(r#"severity == "critical" && confidence > 0.9"#).unwrap();
/// assert_eq!(c.variables(), ["confidence", "severity"]);
/// let err = Condition::compile("attempts = 3").unwrap_err();
/// assert_eq!(err.to_string(), "at column 10: conditions may only read, but this one assigns to `attempts`");
/// ```
#[derive(Clone)]
pub struct Condition {
    source: String,
    tree: Node,
    variables: Vec<String>,
    regexes: HashMap<String, Regex>,
    regex_bytes: usize,
}

impl Condition {
    /// Compiles `source`, rejecting anything over [`MAX_CONDITION_BYTES`], syntax errors,
    /// assignments, `;` chains, invalid constant regular expressions and constant regular
    /// expressions over [`MAX_REGEX_BYTES`] or, together, over [`MAX_POLICY_REGEX_BYTES`].
    pub fn compile(source: &str) -> Result<Self, ConditionError> {
        Self::compile_within(source, &mut RegexBudget::default())
    }

    /// [`compile`](Self::compile), with the constant regular expressions taken from `budget`,
    /// which all the conditions of one policy share. Once a condition went past the budget,
    /// later ones compile no regular expressions (and are not refused for them).
    pub fn compile_within(source: &str, budget: &mut RegexBudget) -> Result<Self, ConditionError> {
        if source.len() > MAX_CONDITION_BYTES {
            return Err(ConditionError {
                column: None,
                message: format!(
                    "condition is {} bytes, longer than the limit of {MAX_CONDITION_BYTES} bytes",
                    source.len()
                ),
            });
        }
        if source.trim().is_empty() {
            return Err(ConditionError {
                column: None,
                message: "condition is empty".to_owned(),
            });
        }
        if let Some(offset) = locate::nesting_beyond(source, MAX_CONDITION_NESTING) {
            return Err(ConditionError {
                column: Some(column_of(source, offset)),
                message: format!(
                    "condition nests parentheses and unary operators deeper than the limit of {MAX_CONDITION_NESTING}"
                ),
            });
        }
        let tree = evalexpr::build_operator_tree(source).map_err(|err| ConditionError {
            column: locate::error_offset(source, &err).map(|offset| column_of(source, offset)),
            message: syntax_message(&err),
        })?;
        if let Some(target) = tree.iter_write_variable_identifiers().next() {
            return Err(ConditionError {
                column: locate::find_assignment(source).map(|offset| column_of(source, offset)),
                message: format!("conditions may only read, but this one assigns to `{target}`"),
            });
        }
        check_structure(source, &tree)?;
        if tree
            .iter()
            .any(|node| matches!(node.operator(), Operator::Chain))
        {
            return Err(ConditionError {
                column: source.find(';').map(|offset| column_of(source, offset)),
                message: "conditions may not chain expressions with `;`".to_owned(),
            });
        }
        let mut regexes = HashMap::new();
        let mut regex_bytes = 0;
        for pattern in constant_regex_patterns(&tree) {
            if budget.exhausted {
                break;
            }
            if regexes.contains_key(&pattern) {
                continue;
            }
            // What it costs: its heap, or (past the size limit) the limit it was built up to,
            // so that a policy of patterns that all fail still does bounded work.
            let (built, bytes, takes) = match compile_regex(source, &pattern) {
                Ok(regex) => {
                    let bytes = regex.memory_usage();
                    (
                        Ok(regex),
                        bytes,
                        format!("takes {} KiB", bytes.div_ceil(1024)),
                    )
                }
                Err(Refused::TooBig(error)) => (
                    Err(error),
                    MAX_REGEX_BYTES,
                    format!("needs more than {} KiB", MAX_REGEX_BYTES / 1024),
                ),
                Err(Refused::Invalid(error)) => return Err(error),
            };
            let left = budget.total.saturating_sub(budget.spent);
            if bytes > left {
                budget.exhausted = true;
                return Err(ConditionError {
                    column: pattern_column(source, &pattern),
                    message: format!(
                        "the regular expressions of the policy's conditions need more than {} KiB \
                         compiled together (`{}` {takes}, {} KiB were left): use fewer or simpler \
                         patterns",
                        budget.total / 1024,
                        shorten(&pattern),
                        left / 1024
                    ),
                });
            }
            budget.spent += bytes;
            let regex = built?;
            regex_bytes += bytes;
            regexes.insert(pattern, regex);
        }
        let mut variables: Vec<String> = tree
            .iter_read_variable_identifiers()
            .map(str::to_owned)
            .collect();
        variables.sort();
        variables.dedup();
        // An unquoted address or version (`srcIp == 10.0.0.1`) parses as a variable of that
        // name, which no event has: the condition would never hold and count an error on every
        // event. No field name starts with a digit.
        if let Some(literal) = variables
            .iter()
            .find(|name| name.starts_with(|c: char| c.is_ascii_digit()))
        {
            return Err(ConditionError {
                column: source
                    .find(literal.as_str())
                    .map(|offset| column_of(source, offset)),
                message: format!(
                    "`{literal}` reads as a variable name, not a value: quote it (`\"{literal}\"`)"
                ),
            });
        }
        Ok(Self {
            source: source.to_owned(),
            tree,
            variables,
            regexes,
            regex_bytes,
        })
    }

    /// The expression as written in the policy.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The compiled operator tree.
    pub fn tree(&self) -> &Node {
        &self.tree
    }

    /// The variables the condition reads, sorted and without duplicates.
    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// The compiled form of a constant pattern passed to `str::regex_matches`.
    pub fn regex(&self, pattern: &str) -> Option<&Regex> {
        self.regexes.get(pattern)
    }

    /// Heap used by the compiled constant regular expressions, in bytes (what they took of
    /// the [`RegexBudget`]).
    pub fn regex_bytes(&self) -> usize {
        self.regex_bytes
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

/// Why a condition did not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", column.map(|c| format!("at column {c}: ")).unwrap_or_default())]
pub struct ConditionError {
    /// 1-based character column inside the expression, where it could be determined.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// Why a constant pattern did not compile.
enum Refused {
    /// Over [`MAX_REGEX_BYTES`].
    TooBig(ConditionError),
    /// Not a regular expression.
    Invalid(ConditionError),
}

/// Compiles a constant pattern of `source` within [`MAX_REGEX_BYTES`], with the syntax of the
/// `regex` crate evalexpr uses (Unicode, UTF-8), so it matches exactly what evalexpr would.
fn compile_regex(source: &str, pattern: &str) -> Result<Regex, Refused> {
    // No full DFA, whatever features other crates turn on (`regex` builds none either): a
    // pattern's cost and heap must not depend on the build.
    let config = meta::Config::new()
        .dfa(false)
        .nfa_size_limit(Some(MAX_REGEX_BYTES))
        .onepass_size_limit(Some(MAX_REGEX_BYTES))
        .hybrid_cache_capacity(2 * MAX_REGEX_BYTES);
    Regex::builder()
        .configure(config)
        .build(pattern)
        .map_err(|err| {
            let column = pattern_column(source, pattern);
            match err.size_limit() {
                Some(limit) => Refused::TooBig(ConditionError {
                    column,
                    message: format!(
                        "regular expression `{}` needs more than {} KiB compiled: use a simpler \
                         pattern (bounded repetitions of Unicode classes such as `\\w{{6}}` are \
                         large; `[A-Za-z0-9_]` or `(?-u:\\w)` are small)",
                        shorten(pattern),
                        limit / 1024
                    ),
                }),
                None => {
                    // The parser's message, as the `regex` crate words it.
                    let text = err
                        .syntax_error()
                        .map_or_else(|| err.to_string(), ToString::to_string);
                    let last = text.lines().last().unwrap_or_default().trim();
                    let detail = last.strip_prefix("error: ").unwrap_or(last);
                    Refused::Invalid(ConditionError {
                        column,
                        message: format!("invalid regular expression `{pattern}`: {detail}"),
                    })
                }
            }
        })
}

/// The column of `pattern` as a string literal in `source` (where a backslash or a quote is
/// written with a backslash before it).
fn pattern_column(source: &str, pattern: &str) -> Option<usize> {
    let escaped = pattern.replace('\\', "\\\\").replace('"', "\\\"");
    source
        .find(&format!("\"{escaped}\""))
        .map(|offset| column_of(source, offset + 1))
}

/// A pattern as quoted in a message: at most 64 characters.
fn shorten(pattern: &str) -> String {
    match pattern.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", pattern.get(..end).unwrap_or(pattern)),
        None => pattern.to_owned(),
    }
}

fn column_of(source: &str, byte_offset: usize) -> usize {
    source.get(..byte_offset).map_or(0, |s| s.chars().count()) + 1
}

fn syntax_message(err: &EvalexprError) -> String {
    match err {
        EvalexprError::UnmatchedLBrace => "unclosed `(`".to_owned(),
        EvalexprError::UnmatchedRBrace => "`)` without a matching `(`".to_owned(),
        EvalexprError::UnmatchedDoubleQuote => "unterminated string".to_owned(),
        EvalexprError::IllegalEscapeSequence(seq) => {
            format!("illegal escape sequence `{seq}` in string")
        }
        EvalexprError::AppendedToLeafNode | EvalexprError::MissingOperatorOutsideOfBrace => {
            "expected an operator between two values".to_owned()
        }
        EvalexprError::PrecedenceViolation => "operator in an unexpected place".to_owned(),
        EvalexprError::UnmatchedPartialToken { first, second } => match second {
            Some(second) => format!("unexpected `{first}` followed by `{second}`"),
            None => format!("incomplete operator `{first}`"),
        },
        other => format!("invalid expression: {other}"),
    }
}

/// Functions a condition may call: evalexpr's built-ins except `random`, which would make a
/// replay disagree with the live run.
pub const ALLOWED_FUNCTIONS: &[&str] = &[
    "math::ln",
    "math::log",
    "math::exp",
    "math::pow",
    "math::cos",
    "math::acos",
    "math::cosh",
    "math::acosh",
    "math::sin",
    "math::asin",
    "math::sinh",
    "math::asinh",
    "math::tan",
    "math::atan",
    "math::tanh",
    "math::atanh",
    "math::sqrt",
    "math::cbrt",
    "math::hypot",
    "floor",
    "round",
    "ceil",
    "math::is_nan",
    "math::is_finite",
    "math::is_infinite",
    "math::is_normal",
    "math::abs",
    "typeof",
    "min",
    "max",
    "if",
    "contains",
    "contains_any",
    "len",
    "str::regex_matches",
    "str::regex_replace",
    "str::to_lowercase",
    "str::to_uppercase",
    "str::trim",
    "str::from",
    "str::substring",
    "bitand",
    "bitor",
    "bitxor",
    "bitnot",
    "shl",
    "shr",
];

/// Rejects what evalexpr's lenient parser accepts but can never evaluate: operators missing an
/// operand and calls of unknown functions.
fn check_structure(source: &str, tree: &Node) -> Result<(), ConditionError> {
    for node in tree.iter() {
        let operator = node.operator();
        let arity = node.children().len();
        let expected = match operator {
            Operator::Add
            | Operator::Sub
            | Operator::Mul
            | Operator::Div
            | Operator::Mod
            | Operator::Exp
            | Operator::Eq
            | Operator::Neq
            | Operator::Gt
            | Operator::Lt
            | Operator::Geq
            | Operator::Leq
            | Operator::And
            | Operator::Or => Some(2),
            Operator::Neg | Operator::Not => Some(1),
            _ => None,
        };
        if let Some(expected) = expected
            && arity != expected
        {
            let symbol = operator.to_string();
            return Err(ConditionError {
                column: locate::dangling_operator(source, symbol.trim())
                    .map(|offset| column_of(source, offset)),
                message: format!("operator `{}` is missing an operand", symbol.trim()),
            });
        }
        if matches!(operator, Operator::Tuple)
            && node.children().iter().any(|child| {
                matches!(child.operator(), Operator::RootNode) && child.children().is_empty()
            })
        {
            return Err(ConditionError {
                column: locate::empty_tuple_element(source).map(|offset| column_of(source, offset)),
                message: "empty element in an argument list".to_owned(),
            });
        }
        if let Operator::FunctionIdentifier { identifier } = operator
            && !ALLOWED_FUNCTIONS.contains(&identifier.as_str())
        {
            return Err(ConditionError {
                column: source
                    .find(identifier.as_str())
                    .map(|offset| column_of(source, offset)),
                message: format!(
                    "unknown function `{identifier}` (a name followed by a value is a call in this language)"
                ),
            });
        }
    }
    Ok(())
}

fn unwrap_root(mut node: &Node) -> &Node {
    while matches!(node.operator(), Operator::RootNode) && node.children().len() == 1 {
        match node.children().first() {
            Some(child) => node = child,
            None => break,
        }
    }
    node
}

/// Patterns given as string literals to `str::regex_matches(subject, "pattern")`.
fn constant_regex_patterns(tree: &Node) -> Vec<String> {
    let mut patterns = Vec::new();
    for node in tree.iter() {
        let Operator::FunctionIdentifier { identifier } = node.operator() else {
            continue;
        };
        if identifier != REGEX_MATCHES {
            continue;
        }
        // The argument is a (possibly wrapped) tuple; its last element is the pattern.
        let Some(arg) = node.children().first().map(unwrap_root) else {
            continue;
        };
        if !matches!(arg.operator(), Operator::Tuple) {
            continue;
        }
        if let Some(last) = arg.children().last().map(unwrap_root)
            && let Operator::Const {
                value: Value::String(pattern),
            } = last.operator()
        {
            patterns.push(pattern.clone());
        }
    }
    patterns
}

#[cfg(test)]
mod tests;
