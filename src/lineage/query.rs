//! The `--where` query language over recipe keys and metric summaries.
//!
//! ```text
//! expr    := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | "(" expr ")" | compare
//! compare := operand ("<" | "<=" | ">" | ">=" | "==" | "=" | "!=") operand
//! operand := NUMBER | 'string' | "string" | KEY
//! ```
//!
//! A KEY is a dotted path: a recipe config key (`optim.lr`), `best.SERIES`,
//! `last.SERIES`, `min.SERIES`, `max.SERIES` (metric summaries), or one of
//! `seed`, `steps_recorded`, `status`. A comparison whose key a run lacks is
//! false for that run; a key no run can have is an error
//! ([`Query::check_keys`]), and so is a bare word where a quoted string was
//! meant (`status = completed`). Errors give the column (1-based) of the
//! offending token.

use std::collections::BTreeSet;
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Text(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Literal(Value),
    /// A key and the column it starts at, for errors about it.
    Key(String, usize),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Query {
    Or(Box<Query>, Box<Query>),
    And(Box<Query>, Box<Query>),
    Not(Box<Query>),
    Compare(Operand, Op, Operand),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} at column {column}\n  {source_text}\n  {caret}")]
pub struct QueryError {
    pub column: usize,
    pub message: String,
    pub source_text: String,
    caret: String,
}

impl QueryError {
    fn new(source_text: &str, column: usize, message: impl Into<String>) -> Self {
        QueryError {
            column,
            message: message.into(),
            source_text: source_text.to_string(),
            caret: format!("{}^", " ".repeat(column.saturating_sub(1))),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Number(f64),
    Text(String),
    Ident(String),
    Op(Op),
    Open,
    Close,
    And,
    Or,
    Not,
    End,
}

fn tokenize(source: &str) -> Result<Vec<(Token, usize)>, QueryError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let op = match two.as_str() {
            "<=" => Some((Op::Le, 2)),
            ">=" => Some((Op::Ge, 2)),
            "==" => Some((Op::Eq, 2)),
            "!=" => Some((Op::Ne, 2)),
            _ => match c {
                '<' => Some((Op::Lt, 1)),
                '>' => Some((Op::Gt, 1)),
                '=' => Some((Op::Eq, 1)),
                _ => None,
            },
        };
        if let Some((op, len)) = op {
            tokens.push((Token::Op(op), column));
            i += len;
            continue;
        }
        match c {
            '(' => {
                tokens.push((Token::Open, column));
                i += 1;
            }
            ')' => {
                tokens.push((Token::Close, column));
                i += 1;
            }
            '\'' | '"' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&d| d == c)
                    .ok_or_else(|| QueryError::new(source, column, "unterminated string"))?;
                tokens.push((
                    Token::Text(chars[i + 1..i + 1 + end].iter().collect()),
                    column,
                ));
                i += end + 2;
            }
            c if c.is_ascii_digit()
                || (c == '-' || c == '.')
                    && chars
                        .get(i + 1)
                        .is_some_and(|d| d.is_ascii_digit() || *d == '.') =>
            {
                let start = i;
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '.'
                        || ((chars[i] == '-' || chars[i] == '+')
                            && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let number = text.parse::<f64>().map_err(|_| {
                    QueryError::new(source, column, format!("`{text}` is not a number"))
                })?;
                tokens.push((Token::Number(number), column));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | '/' | '-'))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let token = match word.as_str() {
                    "and" => Token::And,
                    "or" => Token::Or,
                    "not" => Token::Not,
                    _ => Token::Ident(word),
                };
                tokens.push((token, column));
            }
            other => {
                return Err(QueryError::new(
                    source,
                    column,
                    format!("unexpected character `{other}`"),
                ))
            }
        }
    }
    tokens.push((Token::End, chars.len() + 1));
    Ok(tokens)
}

/// Limits that keep parsing and evaluation off the end of the stack: how
/// deeply `(` and `not` may nest, and how many tokens an expression may have.
const MAX_NESTING: usize = 64;
const MAX_TOKENS: usize = 1000;

struct Parser<'a> {
    source: &'a str,
    tokens: Vec<(Token, usize)>,
    position: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &(Token, usize) {
        &self.tokens[self.position.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> (Token, usize) {
        let token = self.peek().clone();
        self.position += 1;
        token
    }

    fn error(&self, column: usize, message: impl Into<String>) -> QueryError {
        QueryError::new(self.source, column, message)
    }

    fn expr(&mut self) -> Result<Query, QueryError> {
        let mut left = self.and()?;
        while self.peek().0 == Token::Or {
            self.next();
            left = Query::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Query, QueryError> {
        let mut left = self.unary()?;
        while self.peek().0 == Token::And {
            self.next();
            left = Query::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Query, QueryError> {
        let nests = matches!(self.peek().0, Token::Not | Token::Open);
        if nests {
            self.depth += 1;
            if self.depth > MAX_NESTING {
                let column = self.peek().1;
                return Err(self.error(
                    column,
                    format!("nested more than {MAX_NESTING} levels deep"),
                ));
            }
        }
        let query = self.unary_inner();
        if nests {
            self.depth -= 1;
        }
        query
    }

    fn unary_inner(&mut self) -> Result<Query, QueryError> {
        match self.peek().0 {
            Token::Not => {
                self.next();
                Ok(Query::Not(Box::new(self.unary()?)))
            }
            Token::Open => {
                let (_, column) = self.next();
                let inner = self.expr()?;
                match self.next() {
                    (Token::Close, _) => Ok(inner),
                    (_, at) => Err(self.error(
                        at,
                        format!("expected `)` to close the `(` at column {column}"),
                    )),
                }
            }
            _ => self.compare(),
        }
    }

    fn compare(&mut self) -> Result<Query, QueryError> {
        let left = self.operand()?;
        let op = match self.next() {
            (Token::Op(op), _) => op,
            (_, column) => {
                return Err(self.error(column, "expected a comparison (<, <=, >, >=, ==, !=)"))
            }
        };
        let right = self.operand()?;
        Ok(Query::Compare(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, QueryError> {
        match self.next() {
            (Token::Number(n), _) => Ok(Operand::Literal(Value::Number(n))),
            (Token::Text(s), _) => Ok(Operand::Literal(Value::Text(s))),
            (Token::Ident(key), column) => Ok(Operand::Key(key, column)),
            (Token::End, column) => Err(self.error(
                column,
                "the expression ends early: expected a key, number or string",
            )),
            (_, column) => Err(self.error(column, "expected a key, number or string")),
        }
    }
}

impl Query {
    pub fn parse(source: &str) -> Result<Query, QueryError> {
        let tokens = tokenize(source)?;
        if let Some((_, column)) = tokens.get(MAX_TOKENS) {
            return Err(QueryError::new(
                source,
                *column,
                format!("the expression is longer than {MAX_TOKENS} tokens"),
            ));
        }
        let mut parser = Parser {
            source,
            tokens,
            position: 0,
            depth: 0,
        };
        let query = parser.expr()?;
        match parser.next() {
            (Token::End, _) => Ok(query),
            (_, column) => {
                Err(parser.error(column, "unexpected token; expected `and`, `or` or the end"))
            }
        }
    }

    /// Every key the expression names, with its column, left to right.
    pub fn keys(&self) -> Vec<(&str, usize)> {
        match self {
            Query::Or(a, b) | Query::And(a, b) => {
                let mut keys = a.keys();
                keys.extend(b.keys());
                keys
            }
            Query::Not(a) => a.keys(),
            Query::Compare(left, _, right) => [left, right]
                .into_iter()
                .filter_map(|operand| match operand {
                    Operand::Key(key, column) => Some((key.as_str(), *column)),
                    Operand::Literal(_) => None,
                })
                .collect(),
        }
    }

    /// Checks every key against the keys a run can have (`known`): a key
    /// nobody has would silently match nothing. A bare word compared with a
    /// known key (`status = completed`) is a string left unquoted; other
    /// unknown keys get the nearest known key as a hint.
    pub fn check_keys(&self, source: &str, known: &BTreeSet<String>) -> Result<(), QueryError> {
        let unknown = |key: &str| !known.contains(key);
        match self {
            Query::Or(a, b) | Query::And(a, b) => {
                a.check_keys(source, known)?;
                b.check_keys(source, known)
            }
            Query::Not(a) => a.check_keys(source, known),
            Query::Compare(left, _, right) => {
                if let (Operand::Key(a, a_column), Operand::Key(b, b_column)) = (left, right) {
                    let bare_word = match (unknown(a), unknown(b)) {
                        (false, true) => Some((a, b, b_column)),
                        (true, false) => Some((b, a, a_column)),
                        _ => None,
                    };
                    if let Some((key, word, column)) = bare_word {
                        return Err(QueryError::new(
                            source,
                            *column,
                            format!(
                                "`{word}` is not a key: to compare `{key}` with the text, quote it: {key} == '{word}'"
                            ),
                        ));
                    }
                }
                for (key, column) in self.keys() {
                    if unknown(key) {
                        let hint = match nearest(key, known) {
                            Some(best) => format!("; did you mean `{best}`?"),
                            None => String::new(),
                        };
                        return Err(QueryError::new(
                            source,
                            column,
                            format!("unknown key `{key}`{hint} (keys: recipe config paths such as optim.lr, best./last./min./max.SERIES, seed, status, steps; strings go in quotes)"),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// Evaluate against a run, given a lookup from key to value.
    pub fn matches(&self, lookup: &dyn Fn(&str) -> Option<Value>) -> bool {
        match self {
            Query::Or(a, b) => a.matches(lookup) || b.matches(lookup),
            Query::And(a, b) => a.matches(lookup) && b.matches(lookup),
            Query::Not(a) => !a.matches(lookup),
            Query::Compare(left, op, right) => {
                let resolve = |operand: &Operand| match operand {
                    Operand::Literal(value) => Some(value.clone()),
                    Operand::Key(key, _) => lookup(key),
                };
                match (resolve(left), resolve(right)) {
                    (Some(a), Some(b)) => compare(&a, *op, &b),
                    _ => false,
                }
            }
        }
    }
}

/// The known key closest to `key` by edit distance, if it is close enough
/// to be a likely typo.
fn nearest<'a>(key: &str, known: &'a BTreeSet<String>) -> Option<&'a str> {
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), candidate))
        .min()
        .filter(|(distance, _)| *distance <= key.chars().count().max(2) / 3 + 1)
        .map(|(_, candidate)| candidate.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            current.push(
                (previous[j] + usize::from(ca != *cb))
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}

fn compare(a: &Value, op: Op, b: &Value) -> bool {
    let ordering = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.partial_cmp(y),
        (Value::Text(x), Value::Text(y)) => Some(x.cmp(y)),
        // Mixed: compare as text so `name == 'a'` against a number is false.
        (x, y) => Some(x.to_string().cmp(&y.to_string())),
    };
    let Some(ordering) = ordering else {
        return false;
    };
    use std::cmp::Ordering::*;
    match op {
        Op::Lt => ordering == Less,
        Op::Le => ordering != Greater,
        Op::Gt => ordering == Greater,
        Op::Ge => ordering != Less,
        Op::Eq => ordering == Equal,
        Op::Ne => ordering != Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(key: &str) -> Option<Value> {
        match key {
            "optim.lr" => Some(Value::Number(5e-5)),
            "best.eval_loss" => Some(Value::Number(2.0)),
            "adapter.kind" => Some(Value::Text("lora".into())),
            _ => None,
        }
    }

    #[test]
    fn where_expressions_combine_with_and_or_not_and_parentheses() {
        let yes = [
            "optim.lr < 1e-4 and best.eval_loss < 2.1",
            "not (optim.lr > 1e-4) or missing > 1",
            "adapter.kind == 'lora'",
            "(optim.lr >= 5e-5) and not adapter.kind != \"lora\"",
        ];
        let no = [
            "optim.lr < 1e-5",
            "missing == 1",
            "adapter.kind = 'full'",
            "optim.lr < 1e-4 and best.eval_loss > 2.1",
        ];
        for q in yes {
            assert!(Query::parse(q).unwrap().matches(&lookup), "{q}");
        }
        for q in no {
            assert!(!Query::parse(q).unwrap().matches(&lookup), "{q}");
        }
    }

    #[test]
    fn keys_no_run_has_are_errors_naming_the_key() {
        let known: BTreeSet<String> = ["optim.lr", "status", "best.eval_loss"]
            .map(String::from)
            .into();
        let cases = [
            ("typo", "optim.lrr < 1", 1, "did you mean `optim.lr`?"),
            (
                "typo on the right",
                "1 > optim.lrr",
                5,
                "did you mean `optim.lr`?",
            ),
            (
                "unquoted string",
                "status = completed",
                10,
                "quote it: status == 'completed'",
            ),
            (
                "unquoted on the left",
                "completed == status",
                1,
                "`completed` is not a key",
            ),
            (
                "nothing close",
                "zzzzzz > 1",
                1,
                "unknown key `zzzzzz` (keys:",
            ),
        ];
        for (name, source, column, message) in cases {
            let error = Query::parse(source)
                .unwrap()
                .check_keys(source, &known)
                .unwrap_err();
            assert_eq!(error.column, column, "{name}: {error}");
            assert!(error.message.contains(message), "{name}: {error}");
        }
        for fine in [
            "optim.lr < 1 and status == 'completed'",
            "not best.eval_loss > 2",
        ] {
            assert!(
                Query::parse(fine).unwrap().check_keys(fine, &known).is_ok(),
                "{fine}"
            );
        }
    }

    #[test]
    fn syntax_errors_point_at_the_offending_column() {
        let error = Query::parse("optim.lr < 1e-4 and and").unwrap_err();
        assert_eq!(error.column, 21);
        let error = Query::parse("optim.lr 3").unwrap_err();
        assert_eq!(error.column, 10);
        let error = Query::parse("(optim.lr < 3").unwrap_err();
        assert_eq!(error.column, 14);
        assert!(error.to_string().contains("^"));
    }
}
