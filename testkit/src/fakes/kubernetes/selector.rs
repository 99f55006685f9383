//! `labelSelector` and `fieldSelector` as k8s.io/apimachinery parses them (labels.Parse's lexer
//! and recursive descent, fields.ParseSelector's term splitting), with the same error texts.
//! Parse errors become 400 BadRequest in the handler, as in the real list handler.

use std::collections::BTreeMap;

use super::rbac::{label_key_errors, label_value_errors};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Equals,
    DoubleEquals,
    NotEquals,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let val = labels.get(&self.key);
        match self.op {
            Op::In | Op::Equals | Op::DoubleEquals => val.is_some_and(|v| self.values.contains(v)),
            Op::NotIn | Op::NotEquals => val.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => val.is_some(),
            Op::DoesNotExist => val.is_none(),
            Op::GreaterThan | Op::LessThan => {
                let (Some(v), [want]) = (val, self.values.as_slice()) else {
                    return false;
                };
                match (v.parse::<i64>(), want.parse::<i64>()) {
                    (Ok(have), Ok(want)) if self.op == Op::GreaterThan => have > want,
                    (Ok(have), Ok(want)) => have < want,
                    _ => false,
                }
            }
        }
    }
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    reqs: Vec<Requirement>,
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let items = lex(s);
        let mut p = Parser { items, pos: 0 };
        let mut reqs = p.parse()?;
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { reqs })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Error,
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn keyword(s: &str) -> Option<Tok> {
    Some(match s {
        ")" => Tok::ClosedPar,
        "," => Tok::Comma,
        "!" => Tok::DoesNotExist,
        "==" => Tok::DoubleEquals,
        "=" => Tok::Equals,
        ">" => Tok::GreaterThan,
        "in" => Tok::In,
        "<" => Tok::LessThan,
        "!=" => Tok::NotEquals,
        "notin" => Tok::NotIn,
        "(" => Tok::OpenPar,
        _ => return None,
    })
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn lex(s: &str) -> Vec<(Tok, String)> {
    let b = s.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        while pos < b.len() && is_space(b[pos]) {
            pos += 1;
        }
        if pos >= b.len() {
            out.push((Tok::End, String::new()));
            return out;
        }
        if is_special(b[pos]) {
            // Longest operator that is a known token ("!=" over "!").
            let mut buf = Vec::new();
            let mut last: Option<(Tok, String)> = None;
            while pos < b.len() && is_special(b[pos]) {
                buf.push(b[pos]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some(t) = keyword(&text) {
                    last = Some((t, text));
                    pos += 1;
                } else if last.is_some() {
                    break;
                } else {
                    pos += 1;
                }
            }
            match last {
                Some(item) => out.push(item),
                None => out.push((
                    Tok::Error,
                    format!(
                        "error expected: keyword found '{}'",
                        String::from_utf8_lossy(&buf)
                    ),
                )),
            }
        } else {
            let start = pos;
            while pos < b.len() && !is_special(b[pos]) && !is_space(b[pos]) {
                pos += 1;
            }
            let text = s[start..pos].to_string();
            match keyword(&text) {
                Some(t) => out.push((t, text)),
                None => out.push((Tok::Identifier, text)),
            }
        }
    }
}

struct Parser {
    items: Vec<(Tok, String)>,
    pos: usize,
}

impl Parser {
    /// In value context `in`/`notin` are plain identifiers (`x in (in)`).
    fn look(&self, values: bool) -> (Tok, String) {
        let (t, l) = self.items[self.pos.min(self.items.len() - 1)].clone();
        (Self::ctx(t, values), l)
    }

    fn next(&mut self, values: bool) -> (Tok, String) {
        let item = self.look(values);
        if self.pos < self.items.len() - 1 {
            self.pos += 1;
        }
        item
    }

    fn ctx(t: Tok, values: bool) -> Tok {
        if values && matches!(t, Tok::In | Tok::NotIn) {
            Tok::Identifier
        } else {
            t
        }
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut reqs = Vec::new();
        loop {
            let (t, lit) = self.look(true);
            match t {
                Tok::Identifier | Tok::DoesNotExist => {
                    let r = self
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    let (t, l) = self.next(true);
                    match t {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.look(true);
                            if t2 != Tok::Identifier && t2 != Tok::DoesNotExist {
                                return Err(format!(
                                    "found '{l2}', expected: identifier after ','"
                                ));
                            }
                        }
                        _ => return Err(format!("found '{l}', expected: ',' or 'end of string'")),
                    }
                }
                Tok::End => return Ok(reqs),
                _ => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ));
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let (mut t, mut lit) = self.next(true);
        let mut op = None;
        if t == Tok::DoesNotExist {
            op = Some(Op::DoesNotExist);
            (t, lit) = self.next(true);
        }
        if t != Tok::Identifier {
            return Err(format!("found '{lit}', expected: identifier"));
        }
        let key = lit;
        if let Some(e) = label_key_errors(&key) {
            // The parser validates keys against a nil field path, which Go prints as "<nil>".
            return Err(format!(
                "<nil>: Invalid value: {}: {e}",
                super::status::go_quote(&key)
            ));
        }
        let (peek, _) = self.look(true);
        // "!a" ends the requirement whatever follows; "!a=b" then fails in the caller.
        if op.is_some() || peek == Tok::End || peek == Tok::Comma {
            return Ok(Requirement {
                key,
                op: op.unwrap_or(Op::Exists),
                values: vec![],
            });
        }
        let (t, lit) = self.next(false);
        let op = match t {
            Tok::In => Op::In,
            Tok::Equals => Op::Equals,
            Tok::DoubleEquals => Op::DoubleEquals,
            Tok::GreaterThan => Op::GreaterThan,
            Tok::LessThan => Op::LessThan,
            Tok::NotIn => Op::NotIn,
            Tok::NotEquals => Op::NotEquals,
            _ => {
                return Err(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                ));
            }
        };
        let values = match op {
            Op::In | Op::NotIn => self.set_values()?,
            _ => self.exact_value()?,
        };
        let mut errs = Vec::new();
        if matches!(op, Op::GreaterThan | Op::LessThan) {
            for (i, v) in values.iter().enumerate() {
                if v.parse::<i64>().is_err() {
                    errs.push(format!(
                        "values[{i}]: Invalid value: {}: for 'Gt', 'Lt' operators, the value must be an integer",
                        super::status::go_quote(v)
                    ));
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            if let Some(e) = label_value_errors(v) {
                errs.push(format!(
                    "values[{i}][{key}]: Invalid value: {}: {e}",
                    super::status::go_quote(v)
                ));
            }
        }
        match errs.len() {
            0 => Ok(Requirement { key, op, values }),
            1 => Err(errs.remove(0)),
            _ => Err(format!("[{}]", errs.join(", "))),
        }
    }

    fn set_values(&mut self) -> Result<Vec<String>, String> {
        let (t, lit) = self.next(true);
        if t != Tok::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (t, lit) = self.look(true);
        match t {
            Tok::Identifier | Tok::Comma => {
                let s = self.identifiers()?;
                let (t, _) = self.next(true);
                if t != Tok::ClosedPar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                Ok(s)
            }
            Tok::ClosedPar => {
                self.next(true);
                Ok(vec![String::new()])
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    fn identifiers(&mut self) -> Result<Vec<String>, String> {
        let mut s: Vec<String> = Vec::new();
        let insert = |s: &mut Vec<String>, v: String| {
            if !s.contains(&v) {
                s.push(v);
            }
        };
        loop {
            let (t, lit) = self.next(true);
            match t {
                Tok::Identifier => {
                    insert(&mut s, lit);
                    let (t2, l2) = self.look(true);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosedPar => break,
                        _ => return Err(format!("found '{l2}', expected: ',' or ')'")),
                    }
                }
                Tok::Comma => {
                    if s.is_empty() {
                        insert(&mut s, String::new());
                    }
                    let (t2, _) = self.look(true);
                    if t2 == Tok::ClosedPar {
                        insert(&mut s, String::new());
                        break;
                    }
                    if t2 == Tok::Comma {
                        insert(&mut s, String::new());
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
        s.sort();
        Ok(s)
    }

    fn exact_value(&mut self) -> Result<Vec<String>, String> {
        let (t, _) = self.look(true);
        if t == Tok::End || t == Tok::Comma {
            return Ok(vec![String::new()]);
        }
        let (t, lit) = self.next(true);
        if t == Tok::Identifier {
            Ok(vec![lit])
        } else {
            Err(format!("found '{lit}', expected: identifier"))
        }
    }
}

/// A field selector term; RBAC kinds (like every built-in kind without its own field label
/// conversion) support only `metadata.name` and `metadata.namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    value: String,
    negate: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// A cluster-scoped object has no `metadata.namespace` field, so it compares as "".
    pub fn matches(&self, name: &str, namespace: &str) -> bool {
        self.terms.iter().all(|t| {
            let have = if t.field == "metadata.name" {
                name
            } else {
                namespace
            };
            (have == t.value) != t.negate
        })
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = split_terms(s);
        parts.sort();
        let mut terms = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((lhs, op, rhs)) = split_term(&part) else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            let value = unescape(rhs)?;
            if lhs != "metadata.name" && lhs != "metadata.namespace" {
                return Err(format!(
                    "\"{lhs}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                ));
            }
            terms.push(FieldTerm {
                field: lhs.to_string(),
                value,
                negate: op == "!=",
            });
        }
        Ok(Self { terms })
    }
}

/// Splits on commas not escaped by a backslash.
fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// The first operator position wins; at one position `!=` and `==` beat `=`.
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for i in 0..term.len() {
        for op in ["!=", "==", "="] {
            if term[i..].starts_with(op) {
                return Some((&term[..i], op, &term[i + op.len()..]));
            }
        }
    }
    None
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                _ => {
                    return Err(format!(
                        "invalid field selector: invalid escape sequence in value: {s}"
                    ));
                }
            },
            ',' | '=' => {
                return Err(format!(
                    "invalid field selector: unescaped '{c}' in value: {s}"
                ));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_set_requirements_match_like_apimachinery() {
        let l = labels(&[("app", "x"), ("tier", "web"), ("n", "5")]);
        for (sel, want) in [
            ("app=x", true),
            ("app==x", true),
            ("app!=x", false),
            ("app!=y", true),
            ("missing!=y", true),
            ("app in (x,y)", true),
            ("app in (y)", false),
            ("app notin (y)", true),
            ("missing notin (y)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=x,tier=web", true),
            ("app=x, tier=db", false),
            ("n>4", true),
            ("n<4", false),
            ("missing>1", false),
            ("", true),
            ("x in (in)", false),
        ] {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn malformed_label_selectors_are_refused_with_the_parser_text() {
        for (sel, fragment) in [
            ("app=x,", "expected: identifier after ','"),
            (
                "app in x",
                "unable to parse requirement: found 'x' expected: '('",
            ),
            (
                "=x",
                "found '=', expected: !, identifier, or 'end of string'",
            ),
            ("app=x y", "found 'y', expected: ',' or 'end of string'"),
            (
                "app=bad value!",
                "found 'value', expected: ',' or 'end of string'",
            ),
            ("app=-x", "a valid label must be an empty string"),
            ("n>x", "the value must be an integer"),
        ] {
            let err = LabelSelector::parse(sel).expect_err(sel);
            assert!(err.contains(fragment), "{sel}: {err}");
        }
    }

    #[test]
    fn field_selectors_know_only_name_and_namespace() {
        let s = FieldSelector::parse("metadata.name=a,metadata.namespace!=kube-system").unwrap();
        assert!(s.matches("a", "default"));
        assert!(!s.matches("a", "kube-system"));
        assert!(!s.matches("b", "default"));
        let err = FieldSelector::parse("spec.x=1").unwrap_err();
        assert_eq!(
            err,
            "\"spec.x\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        );
        assert!(
            FieldSelector::parse("metadata.name")
                .unwrap_err()
                .contains("can't understand")
        );
    }
}
