//! Token helpers with no knowledge of the attribute: looking through invisible groups,
//! relocating tokens, rebuilding a brace group. A leaf: it uses nothing else of this crate.

use proc_macro2::extra::DelimSpan;
use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use syn::{Expr, Lit, LitStr};

/// Looks through the invisible groups a `macro_rules!` fragment arrives in.
pub(crate) fn ungroup(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(group) => ungroup(&group.expr),
        other => other,
    }
}

/// The string literal `expr` is, if it is one (through invisible groups).
pub(crate) fn string_literal(expr: &Expr) -> Option<&LitStr> {
    match ungroup(expr) {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => Some(lit),
        _ => None,
    }
}

/// `tokens`, located at `span` but resolving names as they did.
pub(crate) fn located_at(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let TokenTree::Group(group) = &tt {
                let mut new = Group::new(group.delimiter(), located_at(group.stream(), span));
                new.set_span(group.span().located_at(span));
                return TokenTree::Group(new);
            }
            tt.set_span(tt.span().located_at(span));
            tt
        })
        .collect()
}

/// `{ tokens }` with the braces at `span`.
pub(crate) fn brace_group(tokens: TokenStream, span: Span) -> Group {
    let mut group = Group::new(Delimiter::Brace, tokens);
    group.set_span(span);
    group
}

/// The whole of a delimiter pair's span, `{` to `}`.
pub(crate) fn whole(span: &DelimSpan) -> Span {
    span.join()
}
