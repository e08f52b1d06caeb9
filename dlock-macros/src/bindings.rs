//! Every name a function's parameters bind, which is what a key placeholder may refer to:
//! `user_id: u64`, `Path(user_id): Path<u64>`, `Json(req): Json<PayRequest>`,
//! `(a, b): (u8, u8)`, `Point { x, y: py }: Point`, `mut x`, `ref x`, `x @ ..`, and `self`.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{FnArg, Ident, Pat, Signature};

pub(crate) struct Bindings {
    /// The span of `self` when the function is a method.
    pub receiver: Option<Span>,
    /// In the order they appear in the signature, each with its span there.
    idents: Vec<Ident>,
}

impl Bindings {
    pub(crate) fn collect(sig: &Signature) -> Bindings {
        let mut bindings = Bindings { receiver: None, idents: Vec::new() };
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(receiver) => bindings.receiver = Some(receiver.self_token.span),
                FnArg::Typed(typed) => bindings.pat(&typed.pat),
            }
        }
        bindings
    }

    fn pat(&mut self, pat: &Pat) {
        match pat {
            Pat::Ident(pat) => {
                self.idents.push(pat.ident.clone());
                if let Some((_, sub)) = &pat.subpat {
                    self.pat(sub);
                }
            }
            Pat::Tuple(pat) => pat.elems.iter().for_each(|p| self.pat(p)),
            Pat::TupleStruct(pat) => pat.elems.iter().for_each(|p| self.pat(p)),
            Pat::Struct(pat) => pat.fields.iter().for_each(|f| self.pat(&f.pat)),
            Pat::Slice(pat) => pat.elems.iter().for_each(|p| self.pat(p)),
            // Every alternative binds the same names; the first is enough.
            Pat::Or(pat) => pat.cases.iter().take(1).for_each(|p| self.pat(p)),
            Pat::Reference(pat) => self.pat(&pat.pat),
            Pat::Paren(pat) => self.pat(&pat.pat),
            Pat::Type(pat) => self.pat(&pat.pat),
            // No bindings (`_`, `..`, literals, ranges, paths), or tokens we cannot see into.
            _ => {}
        }
    }

    /// The binding called `name` (`r#type` is found as `type`).
    pub(crate) fn get(&self, name: &str) -> Option<&Ident> {
        self.idents.iter().find(|ident| ident.unraw() == name)
    }

    /// Every name a placeholder can use, `self` first when there is one.
    pub(crate) fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.receiver
            .map(|_| "self".to_owned())
            .into_iter()
            .chain(self.idents.iter().map(|ident| ident.unraw().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sig: &str) -> Vec<String> {
        match syn::parse_str::<Signature>(sig) {
            Ok(sig) => Bindings::collect(&sig).names().collect(),
            Err(e) => vec![format!("error: {e}")],
        }
    }

    #[test]
    fn collects_every_binding() {
        assert_eq!(names("async fn f(user_id: u64)"), ["user_id"]);
        assert_eq!(names("async fn f(&self, a: u8)"), ["self", "a"]);
        assert_eq!(names("async fn f(mut self)"), ["self"]);
        assert_eq!(names("async fn f(self: Arc<Self>)"), ["self"]);
        assert_eq!(names("async fn f(Path(user_id): Path<u64>, Json(req): Json<Req>)"), ["user_id", "req"]);
        assert_eq!(
            names("async fn f((a, (b, _)): (u8, (u8, u8)), P { x, y: py, .. }: P)"),
            ["a", "b", "x", "py"]
        );
        assert_eq!(
            names("async fn f(mut m: u8, ref r: u8, all @ [first, .., last]: [u8; 3])"),
            ["m", "r", "all", "first", "last"]
        );
        assert_eq!(names("async fn f(&(x): &(u8), r#type: u8)"), ["x", "type"]);
        assert_eq!(names("async fn f(_: u8)"), Vec::<String>::new());
    }
}
