//! Header values with `{variable}` placeholders, parsed once at start-up.

use std::fmt;

use wasmgate_plugin_sdk::RequestInfo;

/// The variables a value may use.
pub const VARIABLES: [&str; 9] = [
    "client_addr",
    "host",
    "authority",
    "scheme",
    "request_id",
    "method",
    "path",
    "site",
    "route",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    ClientAddr,
    Host,
    Authority,
    Scheme,
    RequestId,
    Method,
    Path,
    Site,
    Route,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A parsed value: literal text and variables. `{{` and `}}` stand for literal braces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, PartialEq, Eq)]
pub enum TemplateError {
    Unknown(String),
    Unclosed,
    StrayBrace,
    ControlChar,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Unknown(v) => write!(
                f,
                "unknown variable `{{{v}}}` (known: {})",
                VARIABLES.map(|v| format!("{{{v}}}")).join(", ")
            ),
            TemplateError::Unclosed => {
                f.write_str("`{` without a closing `}` (write `{{` for a literal brace)")
            }
            TemplateError::StrayBrace => {
                f.write_str("`}` without an opening `{` (write `}}` for a literal brace)")
            }
            TemplateError::ControlChar => {
                f.write_str("control characters (CR, LF, …) are not allowed in header values")
            }
        }
    }
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        if s.chars().any(|c| c.is_control() && c != '\t') {
            return Err(TemplateError::ControlChar);
        }
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(TemplateError::StrayBrace),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(TemplateError::Unclosed),
                        }
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Var(var(&name)?));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template(parts))
    }

    /// The request parts the value is made of, or `None` when it uses one that differs for every
    /// request (`{request_id}`). `{site}` is fixed for an instance.
    pub fn parts(&self) -> Option<Vec<wasmgate_plugin_sdk::RequestPart>> {
        use wasmgate_plugin_sdk::RequestPart as P;
        let mut parts = Vec::new();
        for p in &self.0 {
            let part = match p {
                Part::Text(_) | Part::Var(Var::Site) => continue,
                Part::Var(Var::RequestId) => return None,
                Part::Var(Var::ClientAddr) => P::ClientAddr,
                Part::Var(Var::Host | Var::Authority) => P::Authority,
                Part::Var(Var::Scheme) => P::Scheme,
                Part::Var(Var::Method) => P::Method,
                Part::Var(Var::Path) => P::Path,
                Part::Var(Var::Route) => P::Route,
            };
            if !parts.contains(&part) {
                parts.push(part);
            }
        }
        Some(parts)
    }

    /// Whether the value is the same for every request (no variables).
    pub fn is_fixed(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Part::Text(_)))
    }

    pub fn render(&self, req: &RequestInfo) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(value(*v, req)),
            }
        }
        // Request data is the host's, already a valid header value; stay safe regardless.
        out.retain(|c| !c.is_control() || c == '\t');
        out
    }
}

fn var(name: &str) -> Result<Var, TemplateError> {
    Ok(match name {
        "client_addr" => Var::ClientAddr,
        "host" => Var::Host,
        "authority" => Var::Authority,
        "scheme" => Var::Scheme,
        "request_id" => Var::RequestId,
        "method" => Var::Method,
        "path" => Var::Path,
        "site" => Var::Site,
        "route" => Var::Route,
        other => return Err(TemplateError::Unknown(other.to_owned())),
    })
}

fn value(v: Var, r: &RequestInfo) -> &str {
    match v {
        Var::ClientAddr => &r.client_addr,
        Var::Host => r.host(),
        Var::Authority => &r.authority,
        Var::Scheme => &r.scheme,
        Var::RequestId => &r.id,
        Var::Method => &r.method,
        Var::Path => &r.path,
        Var::Site => &r.site,
        Var::Route => &r.route,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let t = Template::parse("{scheme}://{host}{path} {{x}} id={request_id}").expect("valid");
        let info = RequestInfo {
            scheme: "https".into(),
            authority: "a.example:8443".into(),
            path: "/p".into(),
            id: "r1".into(),
            ..RequestInfo::default()
        };
        assert_eq!(t.render(&info), "https://a.example/p {x} id=r1");
    }

    #[test]
    fn rejects_bad_templates() {
        assert_eq!(
            Template::parse("{nope}"),
            Err(TemplateError::Unknown("nope".into()))
        );
        assert_eq!(Template::parse("{host"), Err(TemplateError::Unclosed));
        assert_eq!(Template::parse("a}b"), Err(TemplateError::StrayBrace));
        assert_eq!(Template::parse("a\r\nb"), Err(TemplateError::ControlChar));
    }
}
