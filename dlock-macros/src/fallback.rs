//! What the attribute emits when its input is wrong: the function as written, so the rest of
//! the crate and IDE completion keep working, plus every error as a `compile_error!`.

use proc_macro2::TokenStream;
use quote::quote;

use crate::expand::ttl_bounds_check;
use crate::item::{Body, LockedFn};
use crate::tokens::{brace_group, whole};
use crate::valid::Rejected;

/// `item` unchanged, the errors, and — when the attribute and the function could be read —
/// the `ttl` bounds check at the top of the body, so that its error shows with the others.
pub(crate) fn expand(item: TokenStream, rejected: Box<Rejected>) -> TokenStream {
    let Rejected { error, func, args } = *rejected;
    let errors = error.into_compile_error();
    let ttl_check = args.as_ref().map(ttl_bounds_check).unwrap_or_default();
    match func {
        Some(LockedFn { outer_attrs, vis, sig, body: Some(Body { inner_attrs, brace_span, stmts }) })
            if !ttl_check.is_empty() =>
        {
            let body = brace_group(quote!(#(#inner_attrs)* #ttl_check #stmts), whole(&brace_span));
            quote!(#(#outer_attrs)* #vis #sig #body #errors)
        }
        _ => quote!(#item #errors),
    }
}
