//! Go templates (ESO's `target.template`) → Jinja (kvsync's), for the forms
//! ESO users write — pure.
//!
//! ```text
//!  text {{- .password | b64enc -}} text      text {{- password | b64enc -}} text
//!  {{ index . "db-host" }}               ──▶  {{ values["db-host"] }}
//!  {{ replace "a" "b" .x | upper }}           {{ (x | replace("a", "b")) | upper }}
//!  {{ default "none" .x }}                    {{ x | default("none", true) }}
//!  {{ .x | nindent 4 }}                       {{ "\n" ~ (x | indent(4, true, true)) }}
//! ```
//!
//! Pipelines of fields, literals, parentheses, `index`, `default`,
//! `indent`/`nindent`, `printf` (`%s %v %d`) and the functions in
//! [`FUNCTIONS`] translate; control structures (`if`, `range`, `with`,
//! `define`…), variables and other functions do not, and the error says
//! which, so the converter reports it instead of guessing.
//!
//! Hand-written: no Rust crate parses Go templates into a tree we could
//! re-emit, and the subset is small.

/// The Go/sprig functions translated, and the Jinja filter each becomes
/// (the piped or last argument is the filter's input, the others its arguments).
const FUNCTIONS: &[(&str, &str)] = &[
    ("b64enc", "b64enc"),
    ("b64dec", "b64dec"),
    ("toJson", "toJson"),
    ("fromJson", "fromJson"),
    ("upper", "upper"),
    ("lower", "lower"),
    ("trim", "trim"),
    ("title", "title"),
    ("quote", "quote"),
    ("squote", "squote"),
    ("replace", "replace"),
    ("filterPEM", "filterPEM"),
    ("pkcs12key", "pkcs12key"),
    ("pkcs12keyPass", "pkcs12keyPass"),
    ("pkcs12cert", "pkcs12cert"),
    ("pkcs12certPass", "pkcs12certPass"),
    ("toString", "string"),
    ("join", "join"),
];

/// Jinja words that cannot be used as variable names.
const JINJA_RESERVED: &[&str] = &[
    "and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False", "None",
    "values", "loop", "self",
];

/// Why a template could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("unterminated action (missing }}}})")]
    Unterminated,
    #[error("{{{{ {0} }}}} is a control structure; rewrite it in Jinja by hand")]
    Control(String),
    #[error("function {0:?} has no translation; rewrite it in Jinja by hand")]
    Function(String),
    #[error("cannot translate {0:?}")]
    Syntax(String),
}

/// Translates one Go template into Jinja.
pub fn translate(go: &str) -> Result<String, TranslateError> {
    let mut out = String::new();
    let mut rest = go;
    while let Some(start) = rest.find("{{") {
        literal(&rest[..start], &mut out);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(TranslateError::Unterminated)?;
        let mut action = &after[..end];
        rest = &after[end + 2..];
        let trim_left = action.starts_with("- ");
        let trim_right = action.ends_with(" -");
        if trim_left {
            action = &action[1..];
        }
        if trim_right {
            action = &action[..action.len() - 1];
        }
        let action = action.trim();
        if action.starts_with("/*") && action.ends_with("*/") {
            continue;
        }
        out.push_str(if trim_left { "{{- " } else { "{{ " });
        out.push_str(&pipeline(&tokens(action)?)?);
        out.push_str(if trim_right { " -}}" } else { " }}" });
    }
    literal(rest, &mut out);
    Ok(out)
}

/// Text outside actions; Jinja's own delimiters in it are kept literal.
fn literal(text: &str, out: &mut String) {
    if text.contains("{%") || text.contains("{#") {
        out.push_str("{% raw %}");
        out.push_str(text);
        out.push_str("{% endraw %}");
    } else {
        out.push_str(text);
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Pipe,
    Open,
    Close,
    /// A string literal's content (unescaped).
    Str(String),
    Word(String),
}

fn tokens(action: &str) -> Result<Vec<Token>, TranslateError> {
    let mut tokens = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                chars.next();
            }
            '|' => {
                chars.next();
                tokens.push(Token::Pipe);
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(TranslateError::Syntax(action.into())),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(other) => s.push(other),
                            None => return Err(TranslateError::Syntax(action.into())),
                        },
                        Some(other) => s.push(other),
                    }
                }
                tokens.push(Token::Str(s));
            }
            '`' => {
                chars.next();
                let s: String = chars.by_ref().take_while(|c| *c != '`').collect();
                tokens.push(Token::Str(s));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "|()\"`".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

/// `cmd | cmd | …` → a Jinja expression.
fn pipeline(tokens: &[Token]) -> Result<String, TranslateError> {
    if let Some(Token::Word(first)) = tokens.first() {
        let control = [
            "if", "else", "end", "range", "with", "define", "template", "block", "break",
            "continue",
        ];
        if control.contains(&first.as_str())
            || tokens
                .iter()
                .any(|t| matches!(t, Token::Word(w) if w == ":=" || w == "="))
        {
            return Err(TranslateError::Control(first.clone()));
        }
    }
    let mut input: Option<String> = None;
    for command in split_top_level(tokens) {
        input = Some(command_expr(&command, input)?);
    }
    input.ok_or_else(|| TranslateError::Syntax(String::new()))
}

/// Splits at `|` outside parentheses.
fn split_top_level(tokens: &[Token]) -> Vec<Vec<Token>> {
    let mut commands = vec![Vec::new()];
    let mut depth = 0usize;
    for token in tokens {
        match token {
            Token::Open => depth += 1,
            Token::Close => depth = depth.saturating_sub(1),
            Token::Pipe if depth == 0 => {
                commands.push(Vec::new());
                continue;
            }
            _ => {}
        }
        commands
            .last_mut()
            .expect("never empty")
            .push(token.clone());
    }
    commands
}

/// One command (an operand, or a function and its arguments), with the
/// piped value as its last argument.
fn command_expr(command: &[Token], input: Option<String>) -> Result<String, TranslateError> {
    let mut operands = Vec::new();
    let mut i = 0;
    while i < command.len() {
        match &command[i] {
            Token::Open => {
                let close = matching_close(command, i)?;
                let mut expr = format!("({})", pipeline(&command[i + 1..close])?);
                i = close + 1;
                // A field of the group's result: `(.json | fromJson).a.b`.
                if let Some(Token::Word(fields)) = command.get(i)
                    && let Some(path) = fields.strip_prefix('.')
                    && !path.is_empty()
                {
                    for segment in path.split('.') {
                        expr.push_str(&format!("[{}]", jinja_string(segment)));
                    }
                    i += 1;
                }
                operands.push(Operand::Expr(expr));
                continue;
            }
            Token::Str(s) => operands.push(Operand::Expr(jinja_string(s))),
            Token::Word(w) => operands.push(word(w)?),
            Token::Close | Token::Pipe => return Err(TranslateError::Syntax(")".into())),
        }
        i += 1;
    }
    let mut operands = operands.into_iter();
    match operands.next() {
        Some(Operand::Function(name)) => {
            let mut args: Vec<String> = operands.map(Operand::expr).collect::<Result<_, _>>()?;
            args.extend(input);
            call(&name, args)
        }
        Some(operand) if operands.len() == 0 && input.is_none() => operand.expr(),
        _ => Err(TranslateError::Syntax(format!("{command:?}"))),
    }
}

fn matching_close(command: &[Token], open: usize) -> Result<usize, TranslateError> {
    let mut depth = 0usize;
    for (j, token) in command.iter().enumerate().skip(open) {
        match token {
            Token::Open => depth += 1,
            Token::Close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(j);
                }
            }
            _ => {}
        }
    }
    Err(TranslateError::Syntax("(".into()))
}

enum Operand {
    Expr(String),
    Function(String),
}

impl Operand {
    fn expr(self) -> Result<String, TranslateError> {
        match self {
            Operand::Expr(e) => Ok(e),
            Operand::Function(name) => call(&name, Vec::new()),
        }
    }
}

/// A bare word: a field (`.x`, `.`), a number, a boolean, or a function name.
fn word(w: &str) -> Result<Operand, TranslateError> {
    if w == "." || w == "$" {
        return Ok(Operand::Expr("values".into()));
    }
    if let Some(path) = w.strip_prefix('.') {
        let mut segments = path.split('.');
        let first = segments.next().unwrap_or_default();
        let mut expr = if is_identifier(first) {
            first.to_owned()
        } else {
            format!("values[{}]", jinja_string(first))
        };
        for segment in segments {
            expr.push_str(&format!("[{}]", jinja_string(segment)));
        }
        return Ok(Operand::Expr(expr));
    }
    if w.starts_with('$') {
        return Err(TranslateError::Control(w.into()));
    }
    if w.parse::<f64>().is_ok() || w == "true" || w == "false" {
        return Ok(Operand::Expr(w.into()));
    }
    if w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Ok(Operand::Function(w.into()));
    }
    Err(TranslateError::Syntax(w.into()))
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !JINJA_RESERVED.contains(&name)
}

fn jinja_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// A function applied to its arguments (the last one is the piped value).
fn call(name: &str, mut args: Vec<String>) -> Result<String, TranslateError> {
    let count = args.len();
    let wrong = || TranslateError::Syntax(format!("{name} with {count} arguments"));
    match name {
        "index" => {
            let mut args = args.into_iter();
            let mut expr = args.next().ok_or_else(wrong)?;
            for key in args {
                expr = format!("{expr}[{key}]");
            }
            return Ok(expr);
        }
        "default" => {
            if args.len() != 2 {
                return Err(wrong());
            }
            return Ok(format!(
                "{} | default({}, true)",
                grouped(&args[1]),
                args[0]
            ));
        }
        "printf" => return printf(&args).ok_or_else(wrong),
        "indent" | "nindent" => {
            if args.len() != 2 {
                return Err(wrong());
            }
            let indented = format!("{} | indent({}, true, true)", grouped(&args[1]), args[0]);
            return Ok(match name {
                "nindent" => format!("\"\\n\" ~ ({indented})"),
                _ => indented,
            });
        }
        _ => {}
    }
    let filter = FUNCTIONS
        .iter()
        .find(|(go, _)| *go == name)
        .map(|(_, jinja)| *jinja)
        .ok_or_else(|| TranslateError::Function(name.into()))?;
    let value = args.pop().ok_or_else(wrong)?;
    let value = grouped(&value);
    Ok(if args.is_empty() {
        format!("{value} | {filter}")
    } else {
        format!("{value} | {filter}({})", args.join(", "))
    })
}

/// `printf "<format>" args…` with `%s`/`%v`/`%d` verbs (and `%%`) → a
/// concatenation with `~`; `None` for other formats.
fn printf(args: &[String]) -> Option<String> {
    let (format, values) = args.split_first()?;
    let format: String = serde_json::from_str(format).ok()?;
    let mut values = values.iter();
    let mut parts: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        match chars.next()? {
            '%' => text.push('%'),
            's' | 'v' | 'd' => {
                if !text.is_empty() {
                    parts.push(jinja_string(&std::mem::take(&mut text)));
                }
                parts.push(grouped(values.next()?));
            }
            _ => return None,
        }
    }
    if !text.is_empty() {
        parts.push(jinja_string(&text));
    }
    if values.next().is_some() || parts.is_empty() {
        return None;
    }
    Some(parts.join(" ~ "))
}

/// An expression as a filter's input: in parentheses unless it is one term.
fn grouped(expr: &str) -> String {
    if expr.contains(char::is_whitespace) {
        format!("({expr})")
    } else {
        expr.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MergePolicy;
    use crate::sync::template::render;
    use std::collections::BTreeMap;

    /// Renders the translation of `go` over `values`.
    fn run(go: &str, values: &[(&str, &str)]) -> String {
        let jinja = translate(go).unwrap_or_else(|e| panic!("{go}: {e}"));
        let fetched: BTreeMap<String, Vec<u8>> = values
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let data = render(
            &vec![("k".into(), jinja.clone())],
            &fetched,
            MergePolicy::Replace,
        )
        .unwrap_or_else(|e| panic!("{go} → {jinja}: {e}"));
        String::from_utf8(data["k"].clone()).unwrap()
    }

    #[test]
    fn common_forms_render_as_go_would() {
        let values = [
            ("password", "pw"),
            ("user", "app"),
            ("db-host", "db.local"),
            ("json", r#"{"a":{"b":"deep"}}"#),
            ("empty", ""),
            (
                "cert",
                "-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----\n",
            ),
        ];
        let cases = [
            ("{{ .password }}", "pw"),
            ("{{ .password | b64enc }}", "cHc="),
            ("{{ .password | b64enc | b64dec | upper }}", "PW"),
            ("host={{ index . \"db-host\" }}\n", "host=db.local\n"),
            ("{{ (.json | fromJson).a.b }}", "deep"),
            ("{{ index (.json | fromJson) \"a\" \"b\" }}", "deep"),
            ("{{ .empty | default \"none\" }}", "none"),
            ("{{ default \"none\" .user }}", "app"),
            ("{{ replace \"p\" \"P\" .password }}", "Pw"),
            ("{{ .user | quote }}", "\"app\""),
            (
                "{{ printf \"%s:%s%%\" .user .password | b64enc }}",
                "YXBwOnB3JQ==",
            ),
            ("a:\n  {{- .user | nindent 2 }}", "a:\n  app"),
            (
                "{{ .cert | filterPEM \"CERTIFICATE\" }}",
                "-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----\n",
            ),
            ("{{/* a comment */}}{{ `raw` }}", "raw"),
            ("{% not jinja %} {{ .user }}", "{% not jinja %} app"),
            ("  {{- .user -}}  \n", "app"),
        ];
        for (go, expected) in cases {
            assert_eq!(run(go, &values), expected, "{go}");
        }
    }

    #[test]
    fn what_cannot_be_translated_is_named() {
        for (go, needle) in [
            ("{{ if .x }}a{{ end }}", "control structure"),
            ("{{ range $k, $v := . }}{{ end }}", "control structure"),
            ("{{ $x := .y }}", "control structure"),
            ("{{ .p | jwkPublicKeyPem }}", "\"jwkPublicKeyPem\""),
            ("{{ .x ", "unterminated"),
            ("{{ printf \"%05.2f\" .x }}", "printf with 2 arguments"),
        ] {
            let error = translate(go).unwrap_err().to_string();
            assert!(error.contains(needle), "{go}: {error}");
        }
    }
}
