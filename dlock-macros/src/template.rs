//! Key templates: `"user:<user_id>"`, `"order:<req.order_id>"`, `"{cart:<self.id>}"`.
//!
//! `<name>` and `<name.field.field>` interpolate a binding from the parameters (or `self`);
//! everything else is literal text, `{` and `}` included. There is no escape: `<` always opens
//! a placeholder, and a `>` outside one is plain text. One exception guards a `format!` habit:
//! `{name}` (or `{name.field}`, `{name:?}`) where `name` is a binding is an error, since it would
//! lock every call on one constant key; `{word}` where `word` is no binding stays text.
//!
//! Errors go on the string literal (a proc macro cannot point inside a literal on stable).

use proc_macro2::Span;
use syn::{Ident, LitStr};

use crate::bindings::Bindings;
use crate::suggest;

/// One `key = "..."`, parsed and checked against the function's bindings.
pub(crate) struct Key {
    pub lit: LitStr,
    pub parts: Vec<Part>,
}

pub(crate) enum Part {
    Text(String),
    Value(Value),
}

/// A placeholder resolved to an expression: `root.field.field`.
pub(crate) struct Value {
    /// The binding, spanned where it is declared in the signature when `fields` is empty (so a
    /// type error about it points at the parameter), else at the key.
    pub root: Root,
    pub fields: Vec<syn::Member>,
}

pub(crate) enum Root {
    SelfValue(Span),
    Binding(Ident),
}

/// A placeholder as written, before it is checked against the bindings.
struct Placeholder {
    /// The text between `<` and `>`.
    text: String,
    root: String,
    fields: Vec<String>,
}

impl Key {
    /// Parses `lit` and resolves its placeholders against `bindings` of the function `fn_name`.
    pub(crate) fn new(lit: &LitStr, bindings: &Bindings, fn_name: &Ident) -> syn::Result<Key> {
        let text = lit.value();
        let error = |message: String| syn::Error::new(lit.span(), message);
        if text.is_empty() {
            return Err(error(
                "empty lock key: give it a name that says what it protects, \
                 e.g. `key = \"user:<user_id>\"`"
                    .to_owned(),
            ));
        }

        let mut parts = Vec::new();
        let mut rest = text.as_str();
        while let Some(open) = rest.find('<') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('>') else {
                return Err(error(format!(
                    "unterminated placeholder in key {text:?}: `<` opens a placeholder and \
                     needs a closing `>`, e.g. `<user_id>` (a key cannot contain a literal `<`)"
                )));
            };
            let placeholder = parse_placeholder(&after[..close], &text).map_err(error)?;
            parts.push(Part::Value(resolve(placeholder, lit, bindings, fn_name)?));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        format_habit(&text, &parts, bindings).map_err(error)?;
        Ok(Key { lit: lit.clone(), parts })
    }

    /// The `format!` string: placeholders become `{}`, braces in the text are escaped.
    pub(crate) fn format_string(&self) -> String {
        let mut format = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => format.push_str(&text.replace('{', "{{").replace('}', "}}")),
                Part::Value(_) => format.push_str("{}"),
            }
        }
        format
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Value> {
        self.parts.iter().filter_map(|part| match part {
            Part::Value(value) => Some(value),
            Part::Text(_) => None,
        })
    }
}

/// `{name}` in the text, where `name` is a binding: the user meant its value.
fn format_habit(text: &str, parts: &[Part], bindings: &Bindings) -> Result<(), String> {
    let mut found: Vec<(String, String)> = Vec::new();
    for part in parts {
        let Part::Text(part) = part else { continue };
        let mut rest = part.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else { break };
            let inner = &after[..close];
            let path = inner.strip_suffix(":?").or_else(|| inner.strip_suffix(":#?")).unwrap_or(inner);
            let names_binding = parse_placeholder(path, text).is_ok_and(|placeholder| {
                if placeholder.root == "self" {
                    bindings.receiver.is_some()
                } else {
                    let root = placeholder.root.strip_prefix("r#").unwrap_or(&placeholder.root);
                    bindings.get(root).is_some()
                }
            });
            if names_binding && !found.iter().any(|(written, _)| written == inner) {
                found.push((inner.to_owned(), path.to_owned()));
            }
            rest = if names_binding { &after[close + 1..] } else { after };
        }
    }
    let Some((written, path)) = found.first() else { return Ok(()) };
    let mut as_value = text.to_owned();
    let mut as_tag = text.to_owned();
    for (written, path) in &found {
        as_value = as_value.replace(&format!("{{{written}}}"), &format!("<{path}>"));
        as_tag = as_tag.replace(&format!("{{{written}}}"), &format!("{{<{path}>}}"));
    }
    Err(format!(
        "`{{{written}}}` in key {text:?} is literal text, not the value of `{path}`: every call \
         would lock the same key. Write `<{path}>` for the value: `key = {as_value:?}`; or \
         `{{<{path}>}}` for a Redis Cluster hash tag around it: `key = {as_tag:?}`"
    ))
}

fn parse_placeholder(inner: &str, key: &str) -> Result<Placeholder, String> {
    if inner.is_empty() {
        return Err(format!(
            "empty placeholder `<>` in key {key:?}: write the name of a parameter \
             between `<` and `>`, e.g. `<user_id>`"
        ));
    }
    let invalid = || {
        format!(
            "invalid placeholder `<{inner}>` in key {key:?}: a placeholder is the name of a \
             parameter, optionally followed by `.field`s, e.g. `<user_id>` or `<req.user_id>`"
        )
    };
    let mut segments = inner.split('.');
    let root = segments.next().unwrap_or_default();
    if root != "self" && !is_identifier(root) {
        return Err(invalid());
    }
    let mut fields = Vec::new();
    for field in segments {
        let is_index = !field.is_empty()
            && field.bytes().all(|b| b.is_ascii_digit())
            && (field == "0" || !field.starts_with('0'));
        if !is_index && !is_identifier(field) {
            return Err(invalid());
        }
        fields.push(field.to_owned());
    }
    Ok(Placeholder { text: inner.to_owned(), root: root.to_owned(), fields })
}

/// A Rust identifier, a keyword written raw (`r#type`) or a keyword usable as a field name.
fn is_identifier(text: &str) -> bool {
    let exactly = |source: &str| syn::parse_str::<Ident>(source).is_ok_and(|ident| ident == source);
    exactly(text) || exactly(&format!("r#{text}"))
}

fn resolve(
    placeholder: Placeholder,
    lit: &LitStr,
    bindings: &Bindings,
    fn_name: &Ident,
) -> syn::Result<Value> {
    let span = lit.span();
    let available = || {
        let names: Vec<String> = bindings.names().collect();
        if names.is_empty() {
            format!("`{fn_name}` has no parameters, so its key can only be fixed text")
        } else {
            format!("bindings you can use: {}", suggest::list(names.iter().map(String::as_str)))
        }
    };

    let root = if placeholder.root == "self" {
        match bindings.receiver {
            // Like a plain binding: on the receiver itself, or on the key when fields follow.
            Some(receiver) if placeholder.fields.is_empty() => Root::SelfValue(receiver),
            Some(_) => Root::SelfValue(span),
            None => {
                return Err(syn::Error::new(
                    span,
                    format!(
                        "`<{}>` needs a method that takes `self`, `&self` or `&mut self`, \
                         but `{fn_name}` has no `self` parameter; {}",
                        placeholder.text,
                        available()
                    ),
                ));
            }
        }
    } else {
        let name = placeholder.root.strip_prefix("r#").unwrap_or(&placeholder.root);
        match bindings.get(name) {
            Some(binding) if placeholder.fields.is_empty() => Root::Binding(binding.clone()),
            Some(binding) => {
                let mut ident = binding.clone();
                ident.set_span(span);
                Root::Binding(ident)
            }
            None => {
                let names: Vec<String> = bindings.names().collect();
                let hint = suggest::closest(&placeholder.root, names.iter().map(String::as_str))
                    .map(|name| format!("did you mean `{name}`? "))
                    .unwrap_or_default();
                let message = if names.is_empty() {
                    format!("unknown placeholder `<{}>`: {}", placeholder.text, available())
                } else {
                    format!(
                        "unknown placeholder `<{}>`: `{fn_name}` has no parameter named `{}`; \
                         {hint}{}",
                        placeholder.text,
                        placeholder.root,
                        available()
                    )
                };
                return Err(syn::Error::new(span, message));
            }
        }
    };

    // Fields are located at the key but resolve like generated code: rustc then still says
    // "no field `x` on type `T`" there, but does not offer to rewrite the whole literal.
    let field_span = span.resolved_at(Span::mixed_site());
    let mut fields = Vec::new();
    for field in &placeholder.fields {
        let member = match field.parse::<u32>() {
            Ok(index) => syn::Member::Unnamed(syn::Index { index, span: field_span }),
            Err(_) => {
                let mut ident = syn::parse_str::<Ident>(field)
                    .or_else(|_| syn::parse_str::<Ident>(&format!("r#{field}")))
                    .map_err(|_| {
                        syn::Error::new(span, format!("`{field}` cannot be used as a field name in a key"))
                    })?;
                ident.set_span(field_span);
                syn::Member::Named(ident)
            }
        };
        fields.push(member);
    }
    Ok(Value { root, fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(template: &str, sig: &str) -> Result<Key, String> {
        let sig: syn::Signature = syn::parse_str(sig).map_err(|e| e.to_string())?;
        let bindings = Bindings::collect(&sig);
        let lit = LitStr::new(template, Span::call_site());
        Key::new(&lit, &bindings, &sig.ident).map_err(|e| e.to_string())
    }

    fn format_of(template: &str, sig: &str) -> String {
        match key(template, sig) {
            Ok(key) => key.format_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn formats() {
        let sig = "async fn f(user_id: u64, req: Req)";
        assert_eq!(format_of("user:<user_id>", sig), "user:{}");
        assert_eq!(format_of("{user:<user_id>}:cart", sig), "{{user:{}}}:cart");
        assert_eq!(format_of("<req.a.b>-<user_id>", sig), "{}-{}");
        assert_eq!(format_of("<req.0>", sig), "{}");
        assert_eq!(format_of("fixed", sig), "fixed");
        assert_eq!(format_of("a>b", sig), "a>b");
        assert_eq!(format_of("<self.id>", "async fn f(&self)"), "{}");
        assert_eq!(format_of("<type>", "async fn f(r#type: u8)"), "{}");
        assert_eq!(format_of("<r#type.r#as>", "async fn f(r#type: u8)"), "{}");
    }

    #[test]
    fn errors() {
        let sig = "async fn pay(user_id: u64, amount: u64)";
        let err = |t: &str| format_of(t, sig);
        assert!(err("").contains("empty lock key"));
        assert!(err("user:<user_id").contains("unterminated placeholder"));
        assert!(err("user:<>").contains("empty placeholder"));
        assert!(err("user:< user_id>").contains("invalid placeholder"));
        assert!(err("user:<user_id.>").contains("invalid placeholder"));
        assert!(err("user:<user_id.01>").contains("invalid placeholder"));
        assert!(err("user:<a-b>").contains("invalid placeholder"));
        let unknown = err("user:<usr_id>");
        assert!(unknown.contains("did you mean `user_id`?"), "{unknown}");
        assert!(unknown.contains("`user_id`, `amount`"), "{unknown}");
        let no_self = err("user:<self.id>");
        assert!(no_self.contains("has no `self` parameter"), "{no_self}");
        let none = format_of("<x>", "async fn f()");
        assert!(none.contains("has no parameters"), "{none}");
    }

    #[test]
    fn braces_around_a_binding_are_a_format_habit() {
        let sig = "async fn pay(&self, user_id: u64, req: Req)";
        let err = |t: &str| format_of(t, sig);
        let habit = err("user:{user_id}");
        assert!(habit.contains("`{user_id}` in key \"user:{user_id}\" is literal text"), "{habit}");
        assert!(habit.contains("`key = \"user:<user_id>\"`"), "{habit}");
        assert!(habit.contains("`key = \"user:{<user_id>}\"`"), "{habit}");
        let two = err("{user_id}:{req.id:?}:{user_id}");
        assert!(two.contains("`key = \"<user_id>:<req.id>:<user_id>\"`"), "{two}");
        assert!(err("{self.id}").contains("not the value of `self.id`"));
        assert!(err("{r#user_id}").contains("literal text"));
        // Braces around anything else are text: hash tags, words that are no binding.
        assert_eq!(err("{user:<user_id>}:cart"), "{{user:{}}}:cart");
        assert_eq!(err("{user}:<user_id>"), "{{user}}:{}");
        assert_eq!(err("{}:{ user_id }:{user_id:x}"), "{{}}:{{ user_id }}:{{user_id:x}}");
        assert_eq!(
            err("{{user_id}"),
            "error: `{user_id}` in key \"{{user_id}\" is literal text, not the value of `user_id`: every call would lock the same key. Write `<user_id>` for the value: `key = \"{<user_id>\"`; or `{<user_id>}` for a Redis Cluster hash tag around it: `key = \"{{<user_id>}\"`"
        );
        assert_eq!(format_of("{self}", "async fn f(id: u8)"), "{{self}}");
    }
}
