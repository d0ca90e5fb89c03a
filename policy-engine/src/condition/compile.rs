//! Conditions compiled from evalexpr's operator tree into typed trees over event fields, for
//! the expressions that cannot fail once the fields they read are present.
//!
//! evalexpr stays the language, the parser and the reference: a [`Program`] only answers when
//! every field the condition reads is present, and for those events it gives exactly evalexpr's
//! boolean. Everything else (a missing field, whose error message evalexpr writes; arithmetic,
//! which can overflow; `extra` fields, whose types are only known at run time; functions other
//! than `str::regex_matches` with a constant pattern) goes to evalexpr. Since evalexpr
//! evaluates every operand and these trees cannot fail, `&&` and `||` may short-circuit here.

use evalexpr::{Node, Operator, Value};
use regex_automata::meta::Regex;

use super::view::{EventView, Field, FieldSet, Kind};
use super::{Condition, REGEX_MATCHES, unwrap_root};
use crate::severity::Severity;

/// A condition compiled to a typed tree; see the module documentation.
#[derive(Debug)]
pub(crate) struct Program {
    root: Bool,
    required: FieldSet,
}

/// `field` is one of `values`: a conjunct every event that satisfies the condition meets, used
/// to index conditions (see [`Program::guards`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Guard {
    pub(crate) field: Field,
    pub(crate) values: Vec<Box<str>>,
}

impl Program {
    /// The typed tree of `condition`, or `None` when some part of it must go to evalexpr.
    pub(crate) fn compile(condition: &Condition) -> Option<Program> {
        let mut compiler = Compiler {
            condition,
            required: FieldSet::default(),
        };
        match compiler.operand(condition.tree())? {
            Operand::Bool(mut root) => {
                root.cheap_first();
                Some(Program {
                    root,
                    required: compiler.required,
                })
            }
            _ => None,
        }
    }

    /// The condition's value for the event, or `None` when the event lacks a field the
    /// condition reads (evalexpr then gives the error).
    pub(crate) fn eval(&self, view: &EventView<'_>) -> Option<bool> {
        self.required
            .is_subset(view.present())
            .then(|| self.root.eval(view))
    }

    /// The fields the condition reads.
    pub(crate) fn required(&self) -> FieldSet {
        self.required
    }

    /// Equality tests on string fields that the condition implies: for an event with every
    /// field of [`Program::required`] whose `field` is none of `values`, the condition is
    /// false (with no error, since compiled trees cannot fail).
    pub(crate) fn guards(&self) -> Vec<Guard> {
        self.root.guards()
    }
}

#[derive(Debug)]
enum Bool {
    Const(bool),
    Not(Box<Bool>),
    And(Box<Bool>, Box<Bool>),
    Or(Box<Bool>, Box<Bool>),
    /// `field == "value"` (or `!=` when `equal` is false): the common case, kept flat.
    TextIs {
        field: Field,
        value: Box<str>,
        equal: bool,
    },
    Text(Text, Cmp, Text),
    Int(Int, Cmp, Int),
    Float(Float, Cmp, Float),
    Truth(Box<Bool>, Box<Bool>, bool),
    Regex(Text, Regex),
}

#[derive(Debug)]
enum Text {
    Field(Field),
    Const(Box<str>),
}

/// Integer expressions: fields hold at most `u32::MAX`, and constants are folded, so negation
/// never overflows.
#[derive(Debug)]
enum Int {
    Field(Field),
    Neg(Box<Int>),
    Const(i64),
}

#[derive(Debug)]
enum Float {
    Confidence,
    Neg(Box<Float>),
    Const(f64),
    /// An integer operand of a comparison with a float, as evalexpr's `as_number` converts it.
    FromInt(Int),
}

#[derive(Debug)]
enum Operand {
    Bool(Bool),
    Text(Text),
    Int(Int),
    Float(Float),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

impl Cmp {
    fn apply<T: PartialOrd + ?Sized>(self, a: &T, b: &T) -> bool {
        match self {
            Self::Eq => a == b,
            Self::Ne => a != b,
            Self::Gt => a > b,
            Self::Lt => a < b,
            Self::Ge => a >= b,
            Self::Le => a <= b,
        }
    }
}

struct Compiler<'a> {
    condition: &'a Condition,
    required: FieldSet,
}

impl Compiler<'_> {
    fn operand(&mut self, node: &Node) -> Option<Operand> {
        let children = node.children();
        match node.operator() {
            Operator::RootNode => match children {
                [child] => self.operand(child),
                _ => None,
            },
            Operator::Const { value } => match value {
                Value::Boolean(b) => Some(Operand::Bool(Bool::Const(*b))),
                Value::Int(i) => Some(Operand::Int(Int::Const(*i))),
                Value::Float(f) => Some(Operand::Float(Float::Const(*f))),
                Value::String(s) => Some(Operand::Text(Text::Const(s.as_str().into()))),
                Value::Tuple(_) | Value::Empty => None,
            },
            Operator::VariableIdentifierRead { identifier } => {
                let field = Field::of(identifier)?;
                self.required.insert(field);
                Some(match field.kind() {
                    Kind::Str => Operand::Text(Text::Field(field)),
                    Kind::Int => Operand::Int(Int::Field(field)),
                    Kind::Float => Operand::Float(Float::Confidence),
                })
            }
            Operator::Neg => match children {
                [child] => match self.operand(child)? {
                    Operand::Int(Int::Const(i)) => Some(Operand::Int(Int::Const(i.checked_neg()?))),
                    Operand::Int(int) => Some(Operand::Int(Int::Neg(Box::new(int)))),
                    Operand::Float(Float::Const(f)) => Some(Operand::Float(Float::Const(-f))),
                    Operand::Float(float) => Some(Operand::Float(Float::Neg(Box::new(float)))),
                    Operand::Bool(_) | Operand::Text(_) => None,
                },
                _ => None,
            },
            Operator::Not => match children {
                [child] => match self.operand(child)? {
                    Operand::Bool(b) => Some(Operand::Bool(Bool::Not(Box::new(b)))),
                    _ => None,
                },
                _ => None,
            },
            Operator::And | Operator::Or => {
                let [a, b] = children else {
                    return None;
                };
                let (Operand::Bool(a), Operand::Bool(b)) = (self.operand(a)?, self.operand(b)?)
                else {
                    return None;
                };
                let (a, b) = (Box::new(a), Box::new(b));
                Some(Operand::Bool(if matches!(node.operator(), Operator::And) {
                    Bool::And(a, b)
                } else {
                    Bool::Or(a, b)
                }))
            }
            Operator::Eq => self.comparison(children, Cmp::Eq),
            Operator::Neq => self.comparison(children, Cmp::Ne),
            Operator::Gt => self.comparison(children, Cmp::Gt),
            Operator::Lt => self.comparison(children, Cmp::Lt),
            Operator::Geq => self.comparison(children, Cmp::Ge),
            Operator::Leq => self.comparison(children, Cmp::Le),
            Operator::FunctionIdentifier { identifier } if identifier == REGEX_MATCHES => {
                self.regex_matches(children)
            }
            _ => None,
        }
    }

    /// evalexpr's comparison semantics: `==`/`!=` compare values of any type (values of two
    /// types differ, `1 == 1.0` included); orderings compare two strings, two integers, or two
    /// numbers as floats, and fail on anything else.
    fn comparison(&mut self, children: &[Node], cmp: Cmp) -> Option<Operand> {
        let [a, b] = children else {
            return None;
        };
        let (a, b) = (self.operand(a)?, self.operand(b)?);
        let equality = matches!(cmp, Cmp::Eq | Cmp::Ne);
        let compiled = match (a, b) {
            (Operand::Text(Text::Field(field)), Operand::Text(Text::Const(value)))
            | (Operand::Text(Text::Const(value)), Operand::Text(Text::Field(field)))
                if equality =>
            {
                Bool::TextIs {
                    field,
                    value,
                    equal: cmp == Cmp::Eq,
                }
            }
            (Operand::Text(a), Operand::Text(b)) => Bool::Text(a, cmp, b),
            (Operand::Int(a), Operand::Int(b)) => Bool::Int(a, cmp, b),
            (Operand::Float(a), Operand::Float(b)) => Bool::Float(a, cmp, b),
            (Operand::Int(a), Operand::Float(b)) if !equality => {
                Bool::Float(Float::FromInt(a), cmp, b)
            }
            (Operand::Float(a), Operand::Int(b)) if !equality => {
                Bool::Float(a, cmp, Float::FromInt(b))
            }
            (Operand::Bool(a), Operand::Bool(b)) if equality => {
                Bool::Truth(Box::new(a), Box::new(b), cmp == Cmp::Eq)
            }
            // Values of different types are never equal; the operands cannot fail.
            _ if equality => Bool::Const(cmp == Cmp::Ne),
            _ => return None,
        };
        Some(Operand::Bool(compiled))
    }

    /// `str::regex_matches(subject, "pattern")` with a pattern compiled at load time.
    fn regex_matches(&mut self, children: &[Node]) -> Option<Operand> {
        let [argument] = children else {
            return None;
        };
        let tuple = unwrap_root(argument);
        let (Operator::Tuple, [subject, pattern]) = (tuple.operator(), tuple.children()) else {
            return None;
        };
        let Operator::Const {
            value: Value::String(pattern),
        } = unwrap_root(pattern).operator()
        else {
            return None;
        };
        let regex = self.condition.regex(pattern)?.clone();
        match self.operand(subject)? {
            Operand::Text(subject) => Some(Operand::Bool(Bool::Regex(subject, regex))),
            _ => None,
        }
    }
}

impl Bool {
    fn eval(&self, view: &EventView<'_>) -> bool {
        match self {
            Self::Const(b) => *b,
            Self::Not(b) => !b.eval(view),
            Self::And(a, b) => a.eval(view) && b.eval(view),
            Self::Or(a, b) => a.eval(view) || b.eval(view),
            Self::TextIs {
                field,
                value,
                equal,
            } => (view.text(*field) == &**value) == *equal,
            Self::Text(a, cmp, b) => cmp.apply(a.eval(view), b.eval(view)),
            Self::Int(a, cmp, b) => cmp.apply(&a.eval(view), &b.eval(view)),
            Self::Float(a, cmp, b) => cmp.apply(&a.eval(view), &b.eval(view)),
            Self::Truth(a, b, equal) => (a.eval(view) == b.eval(view)) == *equal,
            Self::Regex(subject, regex) => regex.is_match(subject.eval(view)),
        }
    }

    /// A rough cost of evaluating the tree.
    fn cost(&self) -> u32 {
        match self {
            Self::Const(_) => 0,
            Self::Int(..) | Self::Float(..) => 1,
            Self::TextIs { .. } | Self::Text(..) => 2,
            Self::Regex(..) => 50,
            Self::Not(b) => b.cost(),
            Self::And(a, b) | Self::Or(a, b) | Self::Truth(a, b, _) => a.cost() + b.cost(),
        }
    }

    /// Puts the cheaper operand of every `&&` and `||` first. The trees cannot fail and have
    /// no effects, so the order only changes how soon the answer is known.
    fn cheap_first(&mut self) {
        match self {
            Self::And(a, b) | Self::Or(a, b) => {
                a.cheap_first();
                b.cheap_first();
                if b.cost() < a.cost() {
                    std::mem::swap(a, b);
                }
            }
            Self::Not(b) => b.cheap_first(),
            Self::Truth(a, b, _) => {
                a.cheap_first();
                b.cheap_first();
            }
            _ => {}
        }
    }

    fn guards(&self) -> Vec<Guard> {
        match self {
            Self::TextIs {
                field,
                value,
                equal: true,
            } => vec![Guard {
                field: *field,
                values: vec![value.clone()],
            }],
            // `severityLevel` against a number: the severities whose level passes.
            Self::Int(a, cmp, b) => severity_guard(|level| match (a, b) {
                (Int::Field(Field::SeverityLevel), Int::Const(k)) => Some(cmp.apply(&level, k)),
                (Int::Const(k), Int::Field(Field::SeverityLevel)) => Some(cmp.apply(k, &level)),
                _ => None,
            }),
            Self::Float(a, cmp, b) => severity_guard(|level| match (a, b) {
                (Float::FromInt(Int::Field(Field::SeverityLevel)), Float::Const(f)) => {
                    Some(cmp.apply(&(level as f64), f))
                }
                (Float::Const(f), Float::FromInt(Int::Field(Field::SeverityLevel))) => {
                    Some(cmp.apply(f, &(level as f64)))
                }
                _ => None,
            }),
            // Either side false makes the conjunction false.
            Self::And(a, b) => {
                let mut guards = a.guards();
                guards.extend(b.guards());
                guards
            }
            // Both sides must be false: a field guarded on both sides, with either's values.
            Self::Or(a, b) => {
                let right = b.guards();
                a.guards()
                    .into_iter()
                    .filter_map(|left| {
                        let other = right.iter().find(|g| g.field == left.field)?;
                        let mut values = left.values;
                        values.extend(other.values.iter().cloned());
                        values.sort();
                        values.dedup();
                        Some(Guard {
                            field: left.field,
                            values,
                        })
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
    }
}

/// The guard on `severity` equivalent to a test of `severityLevel` (`passes` gives, for each
/// level, whether the test holds, or `None` if the test is not of that form): none when every
/// severity passes.
fn severity_guard(passes: impl Fn(i64) -> Option<bool>) -> Vec<Guard> {
    let mut values = Vec::new();
    for severity in Severity::ALL {
        match passes(i64::from(severity.level())) {
            None => return Vec::new(),
            Some(true) => values.push(severity.as_str().into()),
            Some(false) => {}
        }
    }
    if values.len() == Severity::ALL.len() {
        return Vec::new();
    }
    vec![Guard {
        field: Field::Severity,
        values,
    }]
}

impl Text {
    fn eval<'v>(&'v self, view: &'v EventView<'_>) -> &'v str {
        match self {
            Self::Field(field) => view.text(*field),
            Self::Const(value) => value,
        }
    }
}

impl Int {
    fn eval(&self, view: &EventView<'_>) -> i64 {
        match self {
            Self::Field(field) => view.int(*field),
            Self::Neg(int) => int.eval(view).wrapping_neg(),
            Self::Const(i) => *i,
        }
    }
}

impl Float {
    fn eval(&self, view: &EventView<'_>) -> f64 {
        match self {
            Self::Confidence => view.confidence(),
            Self::Neg(float) => -float.eval(view),
            Self::Const(f) => *f,
            Self::FromInt(int) => int.eval(view) as f64,
        }
    }
}
