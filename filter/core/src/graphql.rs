//! Finds the playbook a GraphQL request asks to run: the argument of `executePlaybook(...)`.
//!
//! A full GraphQL parser is more than this needs and would grow the `.wasm`; what matters is
//! that no spelling of the request can hide a call from us. So this scans tokens (skipping
//! strings, block strings and comments, where the field name may appear harmlessly) and
//! fails closed: a call whose argument is not a string literal or a variable with a string
//! value is an error, never "no playbook".

use serde_json::Value;

/// Why the GraphQL request could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphQlError {
    /// The body is not a GraphQL-over-HTTP JSON request.
    #[error("body is not a GraphQL JSON request with a `query` string")]
    NotARequest,
    /// The field is called without the argument.
    #[error("{field} is called without its `{argument}` argument")]
    MissingArgument {
        /// The field.
        field: String,
        /// The argument.
        argument: String,
    },
    /// The argument is neither a string nor a variable holding one.
    #[error("the `{0}` argument must be a string or a variable holding one")]
    NotAString(String),
    /// The query does not tokenise (an unterminated string, unbalanced parentheses).
    #[error("the query does not parse: {0}")]
    Syntax(&'static str),
    /// The request can be read more than one way (an argument given twice in one call).
    #[error("{0}")]
    Ambiguous(String),
}

/// Every value of `argument` in calls to `field`, across a request or a batch of them.
pub fn playbook_arguments(body: &Value, field: &str, argument: &str) -> Result<Vec<String>, GraphQlError> {
    let mut found = Vec::new();
    for (query, variables) in requests(body)? {
        for value in argument_values(query, field, argument)? {
            found.push(match value {
                ArgValue::Literal(s) => s,
                ArgValue::Variable(name) => variables
                    .and_then(|v| v.get(name))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| GraphQlError::NotAString(argument.to_owned()))?,
            });
        }
    }
    Ok(found)
}

/// Whether any request of the body (or batch) names `field` outside strings and comments: as
/// a field, an alias or an argument name alike, so no spelling of a call slips past.
pub fn names_field(body: &Value, field: &str) -> Result<bool, GraphQlError> {
    for (query, _) in requests(body)? {
        if tokenize(query)?.contains(&Token::Name(field)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The `query` and `variables` of each request in a body (one request, or a batch of them).
fn requests(body: &Value) -> Result<Vec<(&str, Option<&Value>)>, GraphQlError> {
    let requests: Vec<&Value> = match body {
        Value::Array(batch) => batch.iter().collect(),
        other => vec![other],
    };
    requests
        .into_iter()
        .map(|request| {
            let query = request.get("query").and_then(Value::as_str).ok_or(GraphQlError::NotARequest)?;
            Ok((query, request.get("variables").filter(|v| !v.is_null())))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'q> {
    Name(&'q str),
    /// A number, as written (`-1.5e3`).
    Num(&'q str),
    Str(String),
    Punct(char),
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ArgValue<'q> {
    Literal(String),
    Variable(&'q str),
}

fn argument_values<'q>(query: &'q str, field: &str, argument: &str) -> Result<Vec<ArgValue<'q>>, GraphQlError> {
    let tokens = tokenize(query)?;
    argument_starts(&tokens, field, argument)?
        .into_iter()
        .map(|at| match (tokens.get(at), tokens.get(at + 1)) {
            (Some(Token::Str(s)), _) => Ok(ArgValue::Literal(s.clone())),
            // `$` and the name are two tokens (`$ n` is `$n`), as GraphQL's grammar has it.
            (Some(Token::Punct('$')), Some(Token::Name(v))) => Ok(ArgValue::Variable(v)),
            _ => Err(GraphQlError::NotAString(argument.to_owned())),
        })
        .collect()
}

/// Every value of `argument` in calls to `field`, as the JSON a GraphQL server makes of it
/// (async-graphql's `Json` scalar: objects, lists, strings, numbers, booleans, `null`, an enum
/// value as its name), with variables taken from each request's `variables`. A variable that
/// is not there (its default, if any, is in the operation, which this does not read) or an
/// object that gives a key twice is [`GraphQlError::Ambiguous`]: the filter cannot see what
/// the server will.
pub fn argument_json(body: &Value, field: &str, argument: &str) -> Result<Vec<Value>, GraphQlError> {
    let mut found = Vec::new();
    for (query, variables) in requests(body)? {
        let tokens = tokenize(query)?;
        for mut at in argument_starts(&tokens, field, argument)? {
            found.push(json_value(&tokens, &mut at, variables, 0)?);
        }
    }
    Ok(found)
}

/// Nesting deeper than this in one argument is refused rather than followed.
const MAX_VALUE_DEPTH: usize = 64;

fn json_value(
    tokens: &[Token<'_>],
    at: &mut usize,
    variables: Option<&Value>,
    depth: usize,
) -> Result<Value, GraphQlError> {
    if depth > MAX_VALUE_DEPTH {
        return Err(GraphQlError::Syntax("a value nested too deep"));
    }
    let token = tokens.get(*at).ok_or(GraphQlError::Syntax("a value is missing"))?;
    *at += 1;
    Ok(match token {
        Token::Str(s) => Value::String(s.clone()),
        Token::Num(n) => serde_json::from_str(n).map_err(|_| GraphQlError::Syntax("bad number"))?,
        Token::Name("true") => Value::Bool(true),
        Token::Name("false") => Value::Bool(false),
        Token::Name("null") => Value::Null,
        Token::Name(enum_value) => Value::String((*enum_value).to_owned()),
        Token::Punct('$') => {
            let Some(Token::Name(name)) = tokens.get(*at) else {
                return Err(GraphQlError::Syntax("`$` without a variable name"));
            };
            *at += 1;
            variables
                .and_then(|v| v.get(*name))
                .cloned()
                .ok_or_else(|| GraphQlError::Ambiguous(format!("variable ${name} is not in `variables`")))?
        }
        Token::Punct('[') => {
            let mut items = Vec::new();
            while tokens.get(*at) != Some(&Token::Punct(']')) {
                items.push(json_value(tokens, at, variables, depth + 1)?);
            }
            *at += 1;
            Value::Array(items)
        }
        Token::Punct('{') => {
            let mut object = serde_json::Map::new();
            loop {
                let key = match (tokens.get(*at), tokens.get(*at + 1)) {
                    (Some(Token::Punct('}')), _) => break,
                    (Some(Token::Name(key)), Some(Token::Punct(':'))) => *key,
                    _ => return Err(GraphQlError::Syntax("an object field is not `name: value`")),
                };
                *at += 2;
                let value = json_value(tokens, at, variables, depth + 1)?;
                if object.insert(key.to_owned(), value).is_some() {
                    return Err(GraphQlError::Ambiguous(format!("object field `{key}` is given twice")));
                }
            }
            *at += 1;
            Value::Object(object)
        }
        Token::Punct(_) | Token::Other => return Err(GraphQlError::Syntax("unexpected token in a value")),
    })
}

/// The token index where the value of `argument` starts, in each call to `field`.
fn argument_starts(tokens: &[Token<'_>], field: &str, argument: &str) -> Result<Vec<usize>, GraphQlError> {
    let mut starts = Vec::new();
    let mut i = 0;
    while let Some(token) = tokens.get(i) {
        i += 1;
        if *token != Token::Name(field) {
            continue;
        }
        match tokens.get(i) {
            // `executePlaybook: other` is an alias, `(executePlaybook: 1)` an argument name.
            Some(Token::Punct(':')) => continue,
            Some(Token::Punct('(')) => {}
            _ => {
                return Err(GraphQlError::MissingArgument { field: field.to_owned(), argument: argument.to_owned() });
            }
        }
        // Inside the argument list: `name: value` pairs up to the matching ')'.
        i += 1;
        let mut depth = 1usize;
        let mut start = None;
        while depth > 0 {
            let tok = tokens.get(i).ok_or(GraphQlError::Syntax("unbalanced parentheses"))?;
            match tok {
                Token::Punct('(' | '[' | '{') => depth += 1,
                Token::Punct(')' | ']' | '}') => depth -= 1,
                Token::Name(name)
                    if depth == 1 && *name == argument && tokens.get(i + 1) == Some(&Token::Punct(':')) =>
                {
                    // GraphQL executes `f(name: "a", name: "b")` as neither or either, by server.
                    if start.is_some() {
                        return Err(GraphQlError::Ambiguous(format!(
                            "`{argument}` is given twice in one {field} call"
                        )));
                    }
                    start = Some(i + 2);
                    i += 1;
                    if tokens.get(i + 1) == Some(&Token::Punct('$')) {
                        // Past `$` too, so the variable's name is not read as an argument's.
                        i += 2;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        starts.push(
            start.ok_or_else(|| GraphQlError::MissingArgument {
                field: field.to_owned(),
                argument: argument.to_owned(),
            })?,
        );
    }
    Ok(starts)
}

fn tokenize(query: &str) -> Result<Vec<Token<'_>>, GraphQlError> {
    let bytes = query.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let name_end = |mut j: usize| {
        while bytes.get(j).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            j += 1;
        }
        j
    };
    while let Some(&b) = bytes.get(i) {
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
            0xEF if query.get(i..i + 3) == Some("\u{feff}") => i += 3,
            b'#' => {
                while bytes.get(i).is_some_and(|c| *c != b'\n' && *c != b'\r') {
                    i += 1;
                }
            }
            b'"' if query.get(i..i + 3) == Some("\"\"\"") => {
                let rest = query.get(i + 3..).unwrap_or_default();
                let end = find_block_string_end(rest).ok_or(GraphQlError::Syntax("unterminated block string"))?;
                let raw = rest.get(..end).unwrap_or_default();
                tokens.push(Token::Str(block_string_value(&raw.replace("\\\"\"\"", "\"\"\""))));
                i += 3 + end + 3;
            }
            b'"' => {
                let (s, len) = string_literal(query.get(i + 1..).unwrap_or_default())?;
                tokens.push(Token::Str(s));
                i += 1 + len;
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                let end = name_end(i);
                tokens.push(Token::Name(query.get(i..end).unwrap_or_default()));
                i = end;
            }
            b'-' | b'0'..=b'9' if bytes.get(i + usize::from(b == b'-')).is_some_and(u8::is_ascii_digit) => {
                let end = number_end(bytes, i);
                tokens.push(Token::Num(query.get(i..end).unwrap_or_default()));
                i = end;
            }
            b'(' | b')' | b'[' | b']' | b'{' | b'}' | b':' | b'=' | b'!' | b'@' | b'|' | b'&' | b'$' => {
                tokens.push(Token::Punct(b as char));
                i += 1;
            }
            _ => {
                // Numbers, `...` and anything else: one opaque token per character is enough,
                // since none of them can start a field name or a string.
                tokens.push(Token::Other);
                i += query.get(i..).and_then(|s| s.chars().next()).map_or(1, char::len_utf8);
            }
        }
    }
    Ok(tokens)
}

/// The end of the number starting at `i`: `-?digits(.digits)?([eE][+-]?digits)?`.
fn number_end(bytes: &[u8], mut i: usize) -> usize {
    let digits = |mut j: usize| {
        while bytes.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        j
    };
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    i = digits(i);
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i = digits(i + 1);
    }
    if bytes.get(i).is_some_and(|b| *b == b'e' || *b == b'E') {
        let sign = usize::from(bytes.get(i + 1).is_some_and(|b| *b == b'+' || *b == b'-'));
        if bytes.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            i = digits(i + 1 + sign);
        }
    }
    i
}

fn find_block_string_end(rest: &str) -> Option<usize> {
    let mut from = 0;
    loop {
        let at = from + rest.get(from..)?.find("\"\"\"")?;
        if at > 0 && rest.as_bytes().get(at - 1) == Some(&b'\\') {
            from = at + 3;
            continue;
        }
        return Some(at);
    }
}

/// The value of a block string from its raw text (`\"""` already unescaped), as the GraphQL
/// spec's `BlockStringValue` computes it: the common indentation of the lines after the first
/// removed, then blank leading and trailing lines. Trimming instead would read
/// `"""  system/x"""` as `system/x` where the server reads `  system/x`.
fn block_string_value(raw: &str) -> String {
    let normalised = raw.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = normalised.split('\n').collect();
    let indent = |line: &str| line.len() - line.trim_start_matches([' ', '\t']).len();
    let common = lines.iter().skip(1).filter(|l| indent(l) < l.len()).map(|l| indent(l)).min();
    let mut lines: Vec<&str> = lines
        .iter()
        .enumerate()
        .map(|(n, line)| match common {
            Some(c) if n > 0 => line.get(c.min(line.len())..).unwrap_or_default(),
            _ => line,
        })
        .collect();
    let blank = |line: &&str| line.trim_start_matches([' ', '\t']).is_empty();
    while lines.first().is_some_and(blank) {
        lines.remove(0);
    }
    while lines.last().is_some_and(blank) {
        lines.pop();
    }
    lines.join("\n")
}

/// A `"..."` string body (after the opening quote): its value and its length including the
/// closing quote. Escapes are decoded so that `"sys\u0074em/x"` is read as `system/x`.
fn string_literal(rest: &str) -> Result<(String, usize), GraphQlError> {
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((out, at + 1)),
            '\n' | '\r' => break,
            '\\' => {
                let (_, esc) = chars.next().ok_or(GraphQlError::Syntax("unterminated string"))?;
                match esc {
                    '"' | '\\' | '/' => out.push(esc),
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                        let code = u32::from_str_radix(&hex, 16).map_err(|_| GraphQlError::Syntax("bad \\u escape"))?;
                        out.push(char::from_u32(code).ok_or(GraphQlError::Syntax("bad \\u escape"))?);
                    }
                    // Another escape is a syntax error to a GraphQL server; reading it as the
                    // character would be a second reading of a request the server refuses.
                    _ => return Err(GraphQlError::Syntax("unknown escape")),
                }
            }
            c => out.push(c),
        }
    }
    Err(GraphQlError::Syntax("unterminated string"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn run(body: Value) -> Result<Vec<String>, GraphQlError> {
        playbook_arguments(&body, "executePlaybook", "name")
    }

    #[test]
    fn variable_and_literal_arguments() {
        let q = "mutation Run($name: String!) { executePlaybook(name: $name, args: {a: 1}) { id } }";
        assert_eq!(run(json!({"query": q, "variables": {"name": "data/x"}})).unwrap(), ["data/x"]);
        let q = r#"mutation { executePlaybook(args: {name: "decoy"}, name: "system/x") { id } }"#;
        assert_eq!(run(json!({"query": q})).unwrap(), ["system/x"]);
        let q = r#"mutation { a: executePlaybook(name: "data/a") { id } b: executePlaybook(name: "system/b") { id } }"#;
        assert_eq!(run(json!({"query": q})).unwrap(), ["data/a", "system/b"]);
        let q = "mutation { executePlaybook(name: \"sys\\u0074em/x\") { id } }";
        assert_eq!(run(json!({"query": q})).unwrap(), ["system/x"]);
        let q = "mutation { executePlaybook(name: \"\"\"system/x\"\"\") { id } }";
        assert_eq!(run(json!({"query": q})).unwrap(), ["system/x"]);
    }

    #[test]
    fn mentions_in_strings_comments_and_aliases_are_not_calls() {
        let q = "# executePlaybook(name: \"x\")\nquery { status(note: \"executePlaybook(name: 1)\") { executePlaybook: id } }";
        assert_eq!(run(json!({"query": q})).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn batches_are_all_read() {
        let body = json!([
            {"query": "mutation($n: String) { executePlaybook(name: $n) }", "variables": {"n": "data/a"}},
            {"query": "mutation { executePlaybook(name: \"system/b\") }"}
        ]);
        assert_eq!(run(body).unwrap(), ["data/a", "system/b"]);
    }

    #[test]
    fn failing_closed() {
        let err = |body: Value| run(body).unwrap_err();
        assert_eq!(err(json!({"variables": {}})), GraphQlError::NotARequest);
        assert_eq!(err(json!("query")), GraphQlError::NotARequest);
        assert!(matches!(
            err(json!({"query": "mutation { executePlaybook { id } }"})),
            GraphQlError::MissingArgument { .. }
        ));
        assert!(matches!(
            err(json!({"query": "mutation { executePlaybook(other: 1) { id } }"})),
            GraphQlError::MissingArgument { .. }
        ));
        assert_eq!(
            err(json!({"query": "mutation { executePlaybook(name: 42) }"})),
            GraphQlError::NotAString("name".into())
        );
        assert_eq!(
            err(json!({"query": "mutation($n: String) { executePlaybook(name: $n) }"})),
            GraphQlError::NotAString("name".into())
        );
        assert_eq!(
            err(json!({"query": "mutation($n: String) { executePlaybook(name: $n) }", "variables": {"n": ["x"]}})),
            GraphQlError::NotAString("name".into())
        );
        assert!(matches!(err(json!({"query": "mutation { executePlaybook(name: \"x"})), GraphQlError::Syntax(_)));
        assert!(matches!(err(json!({"query": "mutation { executePlaybook(name: \"x\""})), GraphQlError::Syntax(_)));
    }

    #[test]
    fn one_reading_or_none() {
        let err = |body: Value| run(body).unwrap_err();
        for q in [
            r#"mutation { executePlaybook(name: "data/x", name: "system/x") { id } }"#,
            r#"mutation { executePlaybook(name: "data/x" name: $n) { id } }"#,
            r#"mutation { executePlaybook(name: $n, args: {}, name: $n) { id } }"#,
        ] {
            assert!(matches!(err(json!({"query": q, "variables": {"n": "x"}})), GraphQlError::Ambiguous(_)), "{q}");
        }
        // `$ n` is the variable `n` to a GraphQL server, so it is to us.
        let q = "mutation($n: String!) { executePlaybook(name: $ n) { id } }";
        assert_eq!(run(json!({"query": q, "variables": {"n": "system/x", "": "data/x"}})).unwrap(), ["system/x"]);
        let q = "mutation($n: String!) { executePlaybook(name: $\n# c\n, n) { id } }";
        assert_eq!(run(json!({"query": q, "variables": {"n": "system/x"}})).unwrap(), ["system/x"]);
        let q = "mutation { executePlaybook(name: $) { id } }";
        assert_eq!(err(json!({"query": q, "variables": {"": "data/x"}})), GraphQlError::NotAString("name".into()));
        // Block strings keep the first line's indentation, as the GraphQL spec computes them.
        for (raw, want) in [
            ("\"\"\"  system/x\"\"\"", "  system/x"),
            ("\"\"\"\n    system/x\n  \"\"\"", "system/x"),
            ("\"\"\"\r\n\t system/x \"\"\"", "system/x "),
            ("\"\"\"a\n  b\n    c\"\"\"", "a\nb\n  c"),
        ] {
            let q = format!("mutation {{ executePlaybook(name: {raw}) {{ id }} }}");
            assert_eq!(run(json!({"query": q})).unwrap(), [want], "{raw:?}");
        }
        // An escape GraphQL does not have is the server's syntax error, not a character.
        let q = r#"mutation { executePlaybook(name: "sys\tem/x") { id } }"#;
        assert_eq!(run(json!({"query": q})).unwrap(), ["sys\tem/x"]);
        let q = r#"mutation { executePlaybook(name: "sys\qem/x") { id } }"#;
        assert_eq!(err(json!({"query": q})), GraphQlError::Syntax("unknown escape"));
        let q = r#"mutation { executePlaybook(name: "a\/b\\c\"") { id } }"#;
        assert_eq!(run(json!({"query": q})).unwrap(), ["a/b\\c\""]);
    }

    #[test]
    fn argument_values_as_json() {
        let inputs = |body: Value| argument_json(&body, "proxyRequest", "input");
        let q = r#"mutation { a: proxyRequest(input: {method: "POST", endpoint: "/api/execute",
                     body: {path: "data/x", n: -1.5e3, ok: true, no: null, kind: playbook, list: [1, "a", [false]]}}) { data }
                   proxyRequest(input: $i) { data } }"#;
        let got =
            inputs(json!({"query": q, "variables": {"i": {"method": "GET", "endpoint": "/api/health"}}})).unwrap();
        assert_eq!(
            got,
            [
                json!({"method": "POST", "endpoint": "/api/execute",
                       "body": {"path": "data/x", "n": -1500.0, "ok": true, "no": null, "kind": "playbook", "list": [1, "a", [false]]}}),
                json!({"method": "GET", "endpoint": "/api/health"}),
            ]
        );
        // Variables inside a literal, across a batch, each request with its own.
        let body = json!([
            {"query": "mutation($p: String) { proxyRequest(input: {method: \"POST\", endpoint: \"/e\", body: {path: $p}}) { data } }",
             "variables": {"p": "data/a"}},
            {"query": "mutation($p: String) { proxyRequest(input: {method: \"POST\", endpoint: \"/e\", body: {path: $ p}}) { data } }",
             "variables": {"p": "system/b"}}
        ]);
        let paths: Vec<Value> = inputs(body).unwrap().into_iter().map(|i| i["body"]["path"].clone()).collect();
        assert_eq!(paths, [json!("data/a"), json!("system/b")]);
        // Mentions in strings and comments, and aliases named like the field, are not calls.
        let q = "# proxyRequest(input: {})\nquery { proxyRequest: health note(t: \"proxyRequest(input: 1)\") }";
        assert_eq!(inputs(json!({"query": q})).unwrap(), Vec::<Value>::new());
        // The playbook field still reads strings only.
        let q = "mutation { executePlaybook(name: {path: \"data/x\"}) { id } }";
        assert_eq!(run(json!({"query": q})), Err(GraphQlError::NotAString("name".into())));
    }

    #[test]
    fn argument_values_the_filter_cannot_see_are_refused() {
        let inputs = |q: &str, variables: Value| {
            argument_json(&json!({"query": q, "variables": variables}), "proxyRequest", "input")
        };
        for (q, variables) in [
            ("mutation($i: In = {method: \"GET\"}) { proxyRequest(input: $i) { data } }", json!({})),
            ("mutation { proxyRequest(input: {method: \"POST\", body: {path: $p}}) { data } }", json!({"q": 1})),
            ("mutation { proxyRequest(input: {method: \"POST\", method: \"GET\"}) { data } }", json!({})),
            ("mutation { proxyRequest(input: {body: {path: \"a\", path: \"b\"}}) { data } }", json!({})),
            ("mutation { proxyRequest(input: {}, input: {}) { data } }", json!({})),
        ] {
            assert!(matches!(inputs(q, variables), Err(GraphQlError::Ambiguous(_))), "{q}");
        }
        for q in [
            "mutation { proxyRequest(input: {method: }) { data } }",
            "mutation { proxyRequest(input: {method \"GET\"}) { data } }",
            "mutation { proxyRequest(input: {a: ...}) { data } }",
            "mutation { proxyRequest(input: [1, 2) { data } }",
            "mutation { proxyRequest(input: $) { data } }",
        ] {
            assert!(matches!(inputs(q, json!({})), Err(GraphQlError::Syntax(_))), "{q}");
        }
        let deep = format!("mutation {{ proxyRequest(input: {}{}) {{ data }} }}", "[".repeat(100), "]".repeat(100));
        assert_eq!(inputs(&deep, json!({})), Err(GraphQlError::Syntax("a value nested too deep")));
        assert!(matches!(
            inputs("mutation { proxyRequest { data } }", json!({})),
            Err(GraphQlError::MissingArgument { .. })
        ));
    }

    #[test]
    fn arbitrary_text_never_panics() {
        for q in [
            "",
            "(",
            ")))",
            "\"\"\"",
            "\\",
            "$",
            "executePlaybook(",
            "executePlaybook(name:",
            "é executePlaybook(name: \"\\u12\")",
            "\"\\",
            "proxyRequest(input: {a: [",
            "proxyRequest(input: -",
            "proxyRequest(input: 1e",
        ] {
            let _ = run(json!({"query": q}));
            let _ = argument_json(&json!({"query": q}), "proxyRequest", "input");
        }
    }
}
