//! Finding where in an expression evalexpr's (position-less) errors are.

use std::mem::discriminant;

use evalexpr::EvalexprError;

/// Prefix scans are quadratic; beyond this many tokens we report no column.
const MAX_SCANNED_TOKENS: usize = 256;

/// Byte offset of the token that makes `source` fail with `err`, where it can be found.
pub(super) fn error_offset(source: &str, err: &EvalexprError) -> Option<usize> {
    match err {
        EvalexprError::UnmatchedDoubleQuote => unterminated_string(source),
        EvalexprError::UnmatchedLBrace | EvalexprError::UnmatchedRBrace => unmatched_brace(source),
        EvalexprError::IllegalEscapeSequence(_) => illegal_escape(source),
        _ => first_failing_prefix(source, err),
    }
}

/// Byte offset of the first assignment operator outside strings.
pub(super) fn find_assignment(source: &str) -> Option<usize> {
    tokens(source)?.into_iter().find_map(|(start, end)| {
        let text = source.get(start..end)?;
        let is_assignment = text.ends_with('=') && !matches!(text, "==" | "!=" | "<=" | ">=");
        is_assignment.then_some(start)
    })
}

/// Byte offset where the nesting of `source` first exceeds `limit`.
///
/// Nesting counts open parentheses plus every unary operator seen so far: a conservative bound
/// on the depth of the tree evalexpr builds, whose parsing, evaluation and drop all recurse.
pub(super) fn nesting_beyond(source: &str, limit: usize) -> Option<usize> {
    let spans = tokens(source)?;
    let mut parens = 0usize;
    let mut unary = 0usize;
    let mut operand_before = false;
    for &(start, end) in &spans {
        let text = source.get(start..end)?;
        match text {
            "(" => {
                parens += 1;
                operand_before = false;
            }
            ")" => {
                parens = parens.saturating_sub(1);
                operand_before = true;
            }
            "!" | "-" if !operand_before => unary += 1,
            _ => {
                let first = text.bytes().next().unwrap_or(b' ');
                operand_before = first == b'"'
                    || first.is_ascii_alphanumeric()
                    || first == b'_'
                    || first == b'.'
                    || first >= 0x80;
            }
        }
        if parens + unary > limit {
            return Some(start);
        }
    }
    None
}

/// Byte offset of a binary operator `symbol` that has nothing on one of its sides.
pub(super) fn dangling_operator(source: &str, symbol: &str) -> Option<usize> {
    let spans = tokens(source)?;
    let text = |i: usize| spans.get(i).and_then(|&(s, e)| source.get(s..e));
    let is_operand_end = |t: Option<&str>| {
        t.is_some_and(|t| {
            t == ")"
                || t.starts_with('"')
                || t.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' || b >= 0x80
                })
        })
    };
    let is_operand_start = |t: Option<&str>| {
        t.is_some_and(|t| t == "(" || t == "!" || t == "-" || is_operand_end(Some(t)) && t != ")")
    };
    (0..spans.len()).find_map(|i| {
        if text(i) != Some(symbol) {
            return None;
        }
        let unary = matches!(symbol, "-" | "!");
        let left_ok = unary || (i > 0 && is_operand_end(text(i - 1)));
        let right_ok = is_operand_start(text(i + 1));
        (!left_ok || !right_ok)
            .then(|| spans.get(i).map(|&(s, _)| s))
            .flatten()
    })
}

/// Byte offset of a `,` with nothing after it before `)` or another `,`.
pub(super) fn empty_tuple_element(source: &str) -> Option<usize> {
    let spans = tokens(source)?;
    spans.windows(2).find_map(|pair| match pair {
        [(a, a_end), (b, b_end)] => {
            let first = source.get(*a..*a_end)?;
            let second = source.get(*b..*b_end)?;
            (first == "," && (second == ")" || second == ",") || first == "(" && second == ",")
                .then_some(*b)
        }
        _ => None,
    })
}

fn unterminated_string(source: &str) -> Option<usize> {
    let mut open = None;
    let mut escaped = false;
    for (i, c) in source.char_indices() {
        match (open, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(_), '"') => open = None,
            (None, '"') => open = Some(i),
            _ => {}
        }
    }
    open
}

fn unmatched_brace(source: &str) -> Option<usize> {
    let mut stack = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in source.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' => stack.push(i),
            // The guard pops: a `)` that closes something falls through to `_`.
            ')' if stack.pop().is_none() => return Some(i),
            _ => {}
        }
    }
    stack.first().copied()
}

fn illegal_escape(source: &str) -> Option<usize> {
    let mut in_string = false;
    let mut chars = source.char_indices();
    while let Some((i, c)) = chars.next() {
        match (in_string, c) {
            (false, '"') => in_string = true,
            (true, '"') => in_string = false,
            (true, '\\') => match chars.next() {
                Some((_, '"' | '\\')) => {}
                _ => return Some(i),
            },
            _ => {}
        }
    }
    None
}

/// The start of the last token of the shortest token prefix that fails like the whole.
fn first_failing_prefix(source: &str, err: &EvalexprError) -> Option<usize> {
    let tokens = tokens(source)?;
    if tokens.len() > MAX_SCANNED_TOKENS {
        return None;
    }
    let wanted = discriminant(err);
    tokens.iter().find_map(|&(start, end)| {
        let prefix = source.get(..end)?;
        match evalexpr::build_operator_tree(prefix) {
            Err(e) if discriminant(&e) == wanted => Some(start),
            _ => None,
        }
    })
}

/// Splits an expression into `(start, end)` byte spans of tokens; `None` for an unterminated
/// string.
fn tokens(source: &str) -> Option<Vec<(usize, usize)>> {
    const TWO_CHAR: [&str; 16] = [
        "==", "!=", "<=", ">=", "&&", "||", "+=", "-=", "*=", "/=", "%=", "^=", "&=", "|=", "&&=",
        "||=",
    ];
    let bytes = source.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let start = i;
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if b == b'"' {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return None,
                    Some(b'\\') => i += 2,
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
        } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' || b >= 0x80 {
            while let Some(&c) = bytes.get(i) {
                if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b':' || c >= 0x80 {
                    i += 1;
                } else {
                    break;
                }
            }
        } else {
            i += 1;
            if b != b'(' && b != b')' && b != b',' {
                for len in [3usize, 2] {
                    if let Some(op) = source.get(start..start + len)
                        && TWO_CHAR.contains(&op)
                    {
                        i = start + len;
                        break;
                    }
                }
            }
        }
        spans.push((start, i.min(bytes.len())));
    }
    Some(spans)
}
