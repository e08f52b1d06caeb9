//! The annotated item, parsed into [`LockedFn`], and what it must be on its own: an `async fn`
//! with a body, returning something that could be a `Result`.

use proc_macro2::extra::DelimSpan;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Attribute, ReturnType, Signature, Token, Type, Visibility};

/// A function or a method, with or without a body (a method in a trait may have none).
/// The body is kept as tokens: it is moved, not inspected.
pub(crate) struct LockedFn {
    pub outer_attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub sig: Signature,
    pub body: Option<Body>,
}

pub(crate) struct Body {
    pub inner_attrs: Vec<Attribute>,
    pub brace_span: DelimSpan,
    pub stmts: TokenStream,
}

/// The declared return type, as far as the syntax tells.
pub(crate) enum ReturnKind {
    /// A path, which may name a `Result` through an alias: the compiler decides.
    MaybeResult,
    /// A type no alias can make a `Result` (none, `()`, a tuple, a reference, …): the
    /// compiler's error for the check is the only one worth showing.
    NotResult,
}

impl Parse for LockedFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let outer_attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        let body = if input.peek(Token![;]) {
            input.parse::<Token![;]>()?;
            None
        } else {
            let content;
            let brace = syn::braced!(content in input);
            Some(Body {
                inner_attrs: content.call(Attribute::parse_inner)?,
                brace_span: brace.span,
                stmts: content.parse()?,
            })
        };
        Ok(LockedFn { outer_attrs, vis, sig, body })
    }
}

impl LockedFn {
    /// Parses the item; when it is no function, says so in words a user of the attribute
    /// understands rather than syn's.
    pub(crate) fn parse_item(item: &TokenStream) -> syn::Result<LockedFn> {
        syn::parse2::<LockedFn>(item.clone()).map_err(|error| {
            let has_fn =
                item.clone().into_iter().any(|tt| matches!(&tt, TokenTree::Ident(ident) if ident == "fn"));
            if has_fn {
                error
            } else {
                syn::Error::new(Span::call_site(), "#[distributed_lock] can only be applied to an `async fn`")
            }
        })
    }

    /// What the function must be, whatever the options: `async`, with a body, returning a type
    /// that can be named in the check.
    pub(crate) fn validate(&self) -> syn::Result<()> {
        let sig = &self.sig;
        let name = &sig.ident;
        if sig.asyncness.is_none() {
            let fn_token = &sig.fn_token;
            return Err(syn::Error::new_spanned(
                quote!(#fn_token #name),
                format!(
                    "#[distributed_lock] can only be applied to an `async fn`; write \
                     `async fn {name}`: the lock is acquired and released with `.await` \
                     around the body"
                ),
            ));
        }
        if self.body.is_none() {
            return Err(syn::Error::new_spanned(
                quote!(#sig),
                "#[distributed_lock] needs the function's body: put it on the method in the \
                 `impl` block, not on the declaration in the trait",
            ));
        }
        // `impl Trait` and `!` cannot be named in the check: say it here.
        if let ReturnType::Type(_, ty) = &sig.output
            && matches!(strip(ty), Type::ImplTrait(_) | Type::Never(_))
        {
            return Err(syn::Error::new_spanned(
                ty,
                "`#[distributed_lock]` functions must return `Result<T, E>` where \
                 `E: From<dlock::Error>`; this return type is not a `Result` \
                 (an `impl Trait` may go inside one: `Result<impl Trait, E>`)",
            ));
        }
        Ok(())
    }

    /// The return type as written (`()` at the name when there is none) and where to report
    /// about it.
    pub(crate) fn return_type(&self) -> (Type, Span) {
        match &self.sig.output {
            ReturnType::Type(_, ty) => ((**ty).clone(), ty.span()),
            ReturnType::Default => {
                let span = self.sig.ident.span();
                let unit = syn::TypeTuple { paren_token: syn::token::Paren(span), elems: Default::default() };
                (Type::Tuple(unit), span)
            }
        }
    }

    pub(crate) fn return_kind(&self) -> ReturnKind {
        match strip(&self.return_type().0) {
            Type::Tuple(_)
            | Type::Never(_)
            | Type::Reference(_)
            | Type::Array(_)
            | Type::Slice(_)
            | Type::Ptr(_)
            | Type::BareFn(_)
            | Type::TraitObject(_)
            | Type::ImplTrait(_) => ReturnKind::NotResult,
            _ => ReturnKind::MaybeResult,
        }
    }
}

/// `ty` without the parentheses and invisible groups around it.
fn strip(ty: &Type) -> &Type {
    match ty {
        Type::Paren(inner) => strip(&inner.elem),
        Type::Group(inner) => strip(&inner.elem),
        other => other,
    }
}
