//! From checked input to the rewritten function: code generation only.
//!
//! ```text
//! #[attrs] vis async fn name<G>(params) -> Ret where .. {     // params: see `params.rs`
//!     const _: () = { /* ttl literal within dlock::MIN_TTL..=MAX_TTL, or panic */ };
//!     let __dlock_request = {
//!         let <pattern> = &__dlock_arg1;       // views of renamed patterns, for the keys; a
//!                                              // block of their own, so that no borrow of an
//!                                              // argument lives across an `.await` (a `!Sync`
//!                                              // argument would make the future `!Send`)
//!         ::dlock::__private::request(
//!             ::core::option::Option::None,        // or Some("name"), or Some(EXPR) as below
//!             ::core::convert::From::from([
//!                 ::dlock::__private::format!("user:{}", ::dlock::__private::key_part(&user_id)),
//!             ]),
//!         )
//!         .ttl(::dlock::__private::Duration::new(10u64, 0u32))     // only the options given
//!         .wait({ let __dlock_duration: ::core::time::Duration = user_expression; __dlock_duration })
//!     };
//!     let __dlock_body = async move {
//!         if false { let __dlock_fake: Ret = loop {}; return __dlock_fake; }
//!         let user_id = user_id;                   // every argument moved in (params.rs)
//!         let __dlock_arg1 = __dlock_arg1;
//!         let <pattern> = __dlock_arg1;
//!         { original statements }
//!     };
//!     let __dlock_lock_error = |e| <Ret as ::dlock::__private::LockedReturn>::from_result(  // at `Ret`
//!         Err(<<Ret as LockedReturn>::Error as ::dlock::__private::LockedError>::from_lock_error(e)));
//!     let __dlock_result =
//!         ::dlock::__private::run_locked(__dlock_request, __dlock_body, __dlock_lock_error).await;
//!     __dlock_result
//! }
//! ```
//!
//! In order: a `service = EXPR` expression is evaluated, the keys are formatted, the service is
//! looked up (by name, or the global one), then `ttl` and `wait` are evaluated. The keys are
//! built (from borrows) before the arguments are moved into the body's `async move` block, so
//! the body owns every argument and drops them before the lock is released.
//!
//! The user's statements keep a block of their own, so items they declare cannot shadow the
//! names the prologue and the fake return use; its braces are located at the user's braces but
//! belong to the expansion, so rustc's `unused_braces` does not take them for the user's.
//! `return` / `?` inside mean what they meant before: the fake return gives the block the
//! declared return type, as in tracing-attributes. Generated locals are `__dlock_*` with
//! `Span::mixed_site()`, so they can neither clash with nor be named by user code, and every
//! path is absolute.
//!
//! Spans are chosen for the errors users see: `__dlock_lock_error` is located at the return
//! type and is the only code that requires `Ret: LockedReturn` and its error type to be a
//! `LockedError`, so a wrong return type is reported there, once (`run_locked` has no such
//! bounds: the same predicate twice at one span is reported twice by incremental builds);
//! a key's value at its parameter, a `ttl`/`wait` expression at itself,
//! the `ttl` bounds check at the literal.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Ident, LitStr, Path, Token, Type};

use crate::attr::{Args, Service};
use crate::duration::DurationArg;
use crate::item::{Body, LockedFn, ReturnKind};
use crate::params;
use crate::template::{Key, Root};
use crate::tokens::{brace_group, located_at, whole};
use crate::valid::Checked;

/// The rewritten function.
pub(crate) fn expand(checked: Checked) -> TokenStream {
    let Checked { func, args, keys } = checked;
    let private = private_path(args.krate.as_ref());
    let ttl_check = ttl_bounds_check(&args);
    let (ret, ret_span) = func.return_type();
    let kind = func.return_kind();
    let LockedFn { outer_attrs, vis, mut sig, body } = func;
    let Some(Body { inner_attrs, brace_span, stmts }) = body else {
        // `validate` rejected this already; keep the declaration as it was.
        return quote!(#(#outer_attrs)* #vis #sig;);
    };
    let mixed = Span::mixed_site();

    // The return type must be `Result<T, E>` with `E: From<dlock::Error>`. The traits decide,
    // not the syntax, so `anyhow::Result<T>`, `io::Result<T>` and aliases work. An
    // `impl Trait` in the return type cannot be named: it is erased to `_` for the fake
    // return, and the check is left to the bounds on `__private::lock_error_of`.
    let mut eraser = ImplTraitEraser(false);
    let mut fake_ret = ret.clone();
    eraser.visit_type_mut(&mut fake_ret);
    let at_ret = private(ret_span);
    let located_ret = located_at(ret.to_token_stream(), ret_span);
    let return_check = quote_spanned! {ret_span=>
        <#located_ret as #at_ret::LockedReturn>::check();
    };

    // A return type that no alias can make a `Result`: emit only its check, so the one error
    // is the check's sentence, not a cascade of type mismatches from the rest of the expansion.
    if let ReturnKind::NotResult = kind {
        let body = brace_group(quote!(#(#inner_attrs)* #return_check #ttl_check #stmts), whole(&brace_span));
        return quote!(#(#outer_attrs)* #vis #sig #body);
    }

    // Lets `?` and `return` in the body infer their types from the declared return type.
    let fake = Ident::new("__dlock_fake", ret_span.resolved_at(mixed));
    let fake_return = quote_spanned! {ret_span=>
        #[allow(
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::let_unit_value,
            clippy::needless_return,
            clippy::unreachable
        )]
        if false {
            let #fake: #fake_ret = loop {};
            return #fake;
        }
    };

    let mut used = Vec::new();
    for key in &keys {
        for value in key.values() {
            if let Root::Binding(ident) = &value.root {
                used.push(ident.to_string());
            }
        }
    }
    for duration in [&args.ttl, &args.wait].into_iter().flatten() {
        if let DurationArg::Expr(expr) = duration {
            params::idents_in(expr, &mut used);
        }
    }
    if let Some(Service::Expr(expr)) = &args.service {
        params::idents_in(expr, &mut used);
    }
    let moves = params::rewrite(&mut sig, &|ident| used.iter().any(|name| ident == name));
    let (views, prologue) = (moves.views, moves.prologue);

    let keys = keys.iter().map(|key| key_expr(key, &private));
    let at_mixed = private(mixed);
    let mut options = TokenStream::new();
    if let Some(ttl) = &args.ttl {
        let ttl = duration_expr(ttl, &private);
        options.extend(quote_spanned!(mixed=> .ttl(#ttl)));
    }
    if let Some(wait) = &args.wait {
        let wait = duration_expr(wait, &private);
        options.extend(quote_spanned!(mixed=> .wait(#wait)));
    }
    let service = match &args.service {
        Some(Service::Literal(lit)) => quote_spanned!(mixed=> ::core::option::Option::Some(#lit)),
        Some(Service::Expr(expr)) => {
            // Located at the expression, so that a wrong type is reported there.
            let span = expr.span().resolved_at(mixed);
            let value = Ident::new("__dlock_service", span);
            let name = quote_spanned!(span=> { let #value: &'static str = #expr; #value });
            quote_spanned!(mixed=> ::core::option::Option::Some(#name))
        }
        None => quote_spanned!(mixed=> ::core::option::Option::None),
    };
    if let Some(renew) = &args.renew {
        options.extend(quote_spanned!(mixed=> .renew(#renew)));
    }

    let request = Ident::new("__dlock_request", mixed);
    let locked = Ident::new("__dlock_body", mixed);
    let result = Ident::new("__dlock_result", ret_span.resolved_at(mixed));
    let user_block = brace_group(stmts, whole(&brace_span).resolved_at(mixed));
    // The same locals, located at the return type (a name's hygiene is its resolution).
    let at = |ident: &Ident| Ident::new(&ident.to_string(), ret_span.resolved_at(mixed));
    let (request_at_ret, locked_at_ret) = (at(&request), at(&locked));
    // How a lock error becomes the function's return value. Its path is the check that the
    // return type is a `Result` whose error type has `From<dlock::Error>`: the one place either
    // is reported (`run_locked` has no bounds that could report them again).
    let error = Ident::new("__dlock_error", mixed);
    let lock_error = if eraser.0 {
        quote_spanned!(ret_span=> #at_ret::lock_error_of(&#locked_at_ret))
    } else {
        quote_spanned! {ret_span=>
            |#error| <#located_ret as #at_ret::LockedReturn>::from_result(::core::result::Result::Err(
                <<#located_ret as #at_ret::LockedReturn>::Error as #at_ret::LockedError>::from_lock_error(#error)
            ))
        }
    };
    let into = Ident::new("__dlock_lock_error", ret_span.resolved_at(mixed));
    let run = quote_spanned! {ret_span=>
        let #into = #lock_error;
        let #result = #at_ret::run_locked(#request_at_ret, #locked_at_ret, #into).await;
    };
    let fn_body = brace_group(
        quote_spanned! {mixed=>
            #(#inner_attrs)*
            #ttl_check
            let #request = {
                #views
                #at_mixed::request(
                    #service,
                    ::core::convert::From::from([#(#keys),*]),
                )#options
            };
            let #locked = async move {
                #fake_return
                #prologue
                #user_block
            };
            #run
            #result
        },
        whole(&brace_span),
    );

    quote!(#(#outer_attrs)* #vis #sig #fn_body)
}

/// `dlock::__private` located at a span. The default `::dlock` also takes the hygiene of the
/// span; a path the user wrote keeps its own, so it resolves where it was written.
fn private_path(krate: Option<&Path>) -> impl Fn(Span) -> TokenStream + '_ {
    move |span: Span| match krate {
        Some(krate) => {
            let krate = located_at(krate.to_token_stream(), span);
            quote_spanned!(span=> #krate::__private)
        }
        None => quote_spanned!(span=> ::dlock::__private),
    }
}

/// A `const` item that fails to evaluate, with a message on the literal, when a `ttl` literal
/// is outside `dlock::MIN_TTL..=dlock::MAX_TTL`. The bounds are dlock's own constants, read
/// where the expansion is compiled: one definition for the macro and the runtime.
pub(crate) fn ttl_bounds_check(args: &Args) -> TokenStream {
    let Some(DurationArg::Literal(ttl)) = &args.ttl else {
        return TokenStream::new();
    };
    let span = ttl.lit.span().resolved_at(Span::mixed_site());
    let at = private_path(args.krate.as_ref())(span);
    let secs = Literal::u64_suffixed(ttl.value.as_secs());
    let nanos = Literal::u32_suffixed(ttl.value.subsec_nanos());
    let written = LitStr::new(&ttl.lit.to_token_stream().to_string(), span);
    quote_spanned! {span=>
        const _: () = {
            let message = #at::ttl_literal_error(#at::Duration::new(#secs, #nanos), #written);
            if !message.is_empty() {
                ::core::panic!("{}", message.as_str());
            }
        };
    }
}

/// An expression of type `Duration`. A literal becomes a constant; an expression is bound to a
/// `let` of that type, so a wrong type is reported on the user's expression.
fn duration_expr(duration: &DurationArg, private: &impl Fn(Span) -> TokenStream) -> TokenStream {
    match duration {
        DurationArg::Literal(literal) => {
            let private = private(Span::mixed_site());
            let secs = Literal::u64_suffixed(literal.value.as_secs());
            let nanos = Literal::u32_suffixed(literal.value.subsec_nanos());
            quote!(#private::Duration::new(#secs, #nanos))
        }
        DurationArg::Expr(expr) => {
            // A typed `let` rather than a call: a wrong type is then reported on the expression
            // as "expected `Duration`", with no function of dlock's in the note.
            // Located at the expression, with the hygiene of generated code (lints skip it).
            let span = expr.span().resolved_at(Span::mixed_site());
            let value = Ident::new("__dlock_duration", span);
            quote_spanned!(span=> { let #value: ::core::time::Duration = #expr; #value })
        }
    }
}

/// `format!("user:{}", key_part(&user_id))` for one key.
fn key_expr(key: &Key, private: &impl Fn(Span) -> TokenStream) -> TokenStream {
    let mixed = Span::mixed_site();
    let format = LitStr::new(&key.format_string(), mixed);
    let values = key.values().map(|value| {
        let root = match &value.root {
            Root::SelfValue(span) => Token![self](*span).into_token_stream(),
            Root::Binding(ident) => ident.into_token_stream(),
        };
        if value.fields.is_empty() {
            // Spanned at the binding in the signature: a value that is not `Display` is
            // reported on that parameter.
            let span = match &value.root {
                Root::SelfValue(span) => *span,
                Root::Binding(ident) => ident.span(),
            };
            let at = private(span);
            quote_spanned!(span=> #at::key_part(&#root))
        } else {
            // Spanned at the key, with the hygiene of generated code so that rustc neither
            // mixes in the attribute's span nor offers to rewrite the literal. Only the
            // binding itself resolves as the user wrote it.
            let span = key.lit.span().resolved_at(mixed);
            let at = private(span);
            let fields = &value.fields;
            quote_spanned! {span=>
                {
                    let __dlock_value = &#root;
                    #at::key_part(&__dlock_value #(.#fields)*)
                }
            }
        }
    });
    let at_mixed = private(mixed);
    quote_spanned!(mixed=> #at_mixed::format!(#format #(, #values)*))
}

/// Replaces each `impl Trait` in a type with `_`, which a `let` type may contain; records
/// whether there was one.
struct ImplTraitEraser(bool);

impl VisitMut for ImplTraitEraser {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(impl_trait) = ty {
            self.0 = true;
            *ty = Type::Infer(syn::TypeInfer { underscore_token: Token![_](impl_trait.impl_token.span) });
        } else {
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
}
