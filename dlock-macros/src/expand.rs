//! From the parsed attribute and function to the rewritten function.
//!
//! ```text
//! #[attrs] vis async fn name<G>(params) -> Ret where .. {
//!     ::dlock::__private::check_result::<Ret>();               // located at `Ret`
//!     let __dlock_request = ::dlock::__private::request(
//!         ::core::option::Option::None,            // or Some("name"), Some(service_name(EXPR))
//!         ::core::convert::From::from([
//!             ::dlock::__private::format!("user:{}", ::dlock::__private::key_part(&user_id)),
//!         ]),
//!     )
//!     .ttl(::dlock::__private::Duration::new(10u64, 0u32))     // only the options given
//!     .wait(::dlock::__private::duration(user_expression));
//!     let __dlock_body = async move {
//!         if false { let __dlock_fake: Ret = loop {}; return __dlock_fake; }
//!         { original body }
//!     };
//!     let __dlock_result = ::dlock::__private::run(__dlock_request, __dlock_body).await;
//!     __dlock_result
//! }
//! ```
//!
//! In order: a `service = EXPR` expression is evaluated, the keys are formatted, the service is
//! looked up (by name, or the global one), then `ttl` and `wait` are evaluated. The keys are
//! built (from borrows) before the body is moved into its own `async move` block, so the body
//! keeps every argument, and `return` / `?` inside it mean what they meant before. Generated locals are `__dlock_*` with `Span::mixed_site()`, so they can neither
//! clash with nor be named by user code, and every path is absolute.
//!
//! Spans are chosen for the errors users see: the check and the call to `run` are located at
//! the return type, a key's value at its parameter, a `ttl`/`wait` expression at itself.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Attribute, Ident, LitStr, ReturnType, Signature, Token, Type, Visibility};

use crate::attr::{Args, Errors, Service};
use crate::bindings::Bindings;
use crate::template::{Key, Root};

/// The whole macro: never panics, and on wrong input returns the function unchanged plus
/// `compile_error!`s, so the rest of the crate (and IDE completion) keeps working.
pub(crate) fn distributed_lock(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = Args::parse(args, &mut errors);
    let func = match syn::parse2::<LockedFn>(item.clone()) {
        Ok(func) => func,
        Err(error) => {
            errors.push(not_a_function(&item, error));
            return with_errors(item, errors);
        }
    };
    if let Err(error) = func.validate() {
        errors.push(error);
    }
    let Some(args) = args else {
        return with_errors(item, errors);
    };

    let bindings = Bindings::collect(&func.sig);
    let mut keys = Vec::new();
    for lit in &args.keys {
        match Key::new(lit, &bindings, &func.sig.ident) {
            Ok(key) => keys.push(key),
            Err(error) => errors.push(error),
        }
    }
    for (i, lit) in args.keys.iter().enumerate() {
        if args.keys[..i].iter().any(|earlier| earlier.value() == lit.value()) {
            errors.push(syn::Error::new(
                lit.span(),
                format!("the key {:?} is given twice; give each lock key once", lit.value()),
            ));
        }
    }

    match errors.finish() {
        Ok(()) => generate(func, &args, &keys),
        Err(error) => {
            let mut item = item;
            item.extend(error.into_compile_error());
            item
        }
    }
}

fn with_errors(mut item: TokenStream, errors: Errors) -> TokenStream {
    if let Err(error) = errors.finish() {
        item.extend(error.into_compile_error());
    }
    item
}

/// The input did not parse as a function. If it has no `fn` at all it is some other item
/// (a struct, an impl block, …); otherwise show syn's error, which points at the bad syntax.
fn not_a_function(item: &TokenStream, error: syn::Error) -> syn::Error {
    let has_fn = item.clone().into_iter().any(|tt| matches!(&tt, TokenTree::Ident(ident) if ident == "fn"));
    if has_fn {
        error
    } else {
        syn::Error::new(Span::call_site(), "#[distributed_lock] can only be applied to an `async fn`")
    }
}

/// A function or a method, with or without a body (a method in a trait may have none).
/// The body is kept as tokens: it is moved, not inspected.
struct LockedFn {
    outer_attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
    body: Option<Body>,
}

struct Body {
    inner_attrs: Vec<Attribute>,
    brace_span: proc_macro2::extra::DelimSpan,
    stmts: TokenStream,
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
    fn validate(&self) -> syn::Result<()> {
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
        Ok(())
    }
}

fn generate(func: LockedFn, args: &Args, keys: &[Key]) -> TokenStream {
    let LockedFn { outer_attrs, vis, sig, body } = func;
    let Some(Body { inner_attrs, brace_span, stmts }) = body else {
        // `validate` rejected this already; keep the declaration as it was.
        return quote!(#(#outer_attrs)* #vis #sig;);
    };
    let mixed = Span::mixed_site();
    // `dlock::__private` located at `span`. The default `::dlock` also takes the hygiene of
    // `span`; a path the user wrote keeps its own, so it resolves where it was written.
    let private = |span: Span| match &args.krate {
        Some(krate) => {
            let krate = located_at(krate.to_token_stream(), span);
            quote_spanned!(span=> #krate::__private)
        }
        None => quote_spanned!(span=> ::dlock::__private),
    };

    // The return type must be `Result<T, E>` with `E: From<dlock::Error>`. The trait decides,
    // not the syntax, so `anyhow::Result<T>`, `io::Result<T>` and aliases work.
    let (ret, ret_span) = match &sig.output {
        ReturnType::Type(_, ty) => ((**ty).clone(), ty.span()),
        ReturnType::Default => {
            let span = sig.ident.span();
            let unit = syn::TypeTuple { paren_token: syn::token::Paren(span), elems: Default::default() };
            (Type::Tuple(unit), span)
        }
    };
    // An `impl Trait` in the return type cannot be named in the body: it is erased to `_`
    // for the inference hint, and the check is left to the bounds on `run`.
    let mut eraser = ImplTraitEraser(false);
    let mut fake_ret = ret.clone();
    eraser.visit_type_mut(&mut fake_ret);
    let has_impl_trait = eraser.0;

    // The check and the call to `run` are located at the return type's first token: rustc
    // drops an error repeated at one span, so a missing `From<dlock::Error>` is reported once,
    // by the check, rather than again for the bounds of `run`.
    let at_ret = private(ret_span);
    let check = if has_impl_trait {
        TokenStream::new()
    } else {
        let ret = located_at(ret.to_token_stream(), ret_span);
        quote_spanned!(ret_span=> #at_ret::check_result::<#ret>();)
    };

    // A return type that no alias can make a `Result` (none, `()`, a tuple, a reference, …):
    // emit only the check, so the one error is the check's sentence, not a cascade of type
    // mismatches from the rest of the expansion.
    if !could_be_result(&ret) {
        // `impl Trait` and `!` cannot be named in the check: say it ourselves.
        if has_impl_trait || matches!(ret, Type::Never(_)) {
            let error = syn::Error::new_spanned(
                &ret,
                "`#[distributed_lock]` functions must return `Result<T, E>` where \
                 `E: From<dlock::Error>`; this return type is not a `Result` \
                 (an `impl Trait` may go inside one: `Result<impl Trait, E>`)",
            );
            let body = brace_group(quote!(#(#inner_attrs)* #stmts), &brace_span);
            let mut item = quote!(#(#outer_attrs)* #vis #sig #body);
            item.extend(error.into_compile_error());
            return item;
        }
        let body = brace_group(quote!(#(#inner_attrs)* #check #stmts), &brace_span);
        return quote!(#(#outer_attrs)* #vis #sig #body);
    }

    // Lets `?` and `return` in the body infer their types from the declared return type,
    // as in tracing-attributes.
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

    let keys = keys.iter().map(|key| key_expr(key, &private));
    let at_mixed = private(mixed);
    let mut options = TokenStream::new();
    if let Some(ttl) = &args.ttl {
        let ttl = ttl.to_tokens(&private);
        options.extend(quote_spanned!(mixed=> .ttl(#ttl)));
    }
    if let Some(wait) = &args.wait {
        let wait = wait.to_tokens(&private);
        options.extend(quote_spanned!(mixed=> .wait(#wait)));
    }
    let service = match &args.service {
        Some(Service::Literal(lit)) => quote_spanned!(mixed=> ::core::option::Option::Some(#lit)),
        Some(Service::Expr(expr)) => {
            // Located at the expression, so that a wrong type is reported there.
            let span = expr.span();
            let at_expr = private(span);
            let name = quote_spanned!(span=> #at_expr::service_name(#expr));
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
    let block = brace_group(stmts, &brace_span);
    // The same locals, located at the return type (a name's hygiene is its resolution).
    let at = |ident: &Ident| Ident::new(&ident.to_string(), ret_span.resolved_at(mixed));
    let (request_at_ret, locked_at_ret) = (at(&request), at(&locked));
    let run = quote_spanned! {ret_span=>
        let #result = #at_ret::run(#request_at_ret, #locked_at_ret).await;
    };
    let fn_body = brace_group(
        quote_spanned! {mixed=>
            #(#inner_attrs)*
            #check
            let #request = #at_mixed::request(
                #service,
                ::core::convert::From::from([#(#keys),*]),
            )#options;
            let #locked = async move {
                #fake_return
                #block
            };
            #run
            #result
        },
        &brace_span,
    );

    quote!(#(#outer_attrs)* #vis #sig #fn_body)
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

fn brace_group(tokens: TokenStream, span: &proc_macro2::extra::DelimSpan) -> Group {
    let mut group = Group::new(Delimiter::Brace, tokens);
    group.set_span(span.join());
    group
}

/// Whether `ty` may name a `Result`: any path may (through an alias), but no tuple,
/// reference, array, pointer, function pointer or trait object can.
fn could_be_result(ty: &Type) -> bool {
    match ty {
        Type::Paren(inner) => could_be_result(&inner.elem),
        Type::Group(inner) => could_be_result(&inner.elem),
        Type::Tuple(_)
        | Type::Never(_)
        | Type::Reference(_)
        | Type::Array(_)
        | Type::Slice(_)
        | Type::Ptr(_)
        | Type::BareFn(_)
        | Type::TraitObject(_)
        | Type::ImplTrait(_) => false,
        _ => true,
    }
}

/// `tokens`, located at `span` but resolving names as they did.
fn located_at(tokens: TokenStream, span: Span) -> TokenStream {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(args: &str, item: &str) -> String {
        match (args.parse::<TokenStream>(), item.parse::<TokenStream>()) {
            (Ok(args), Ok(item)) => distributed_lock(args, item).to_string(),
            _ => String::from("unlexable"),
        }
    }

    const PAY: &str = "async fn pay(user_id: u64) -> Result<u64, E> { Ok(user_id) }";

    #[test]
    fn valid_input_expands_without_errors() {
        let cases = [
            (r#"key = "user:<user_id>""#, PAY),
            (
                r#"key = "{u:<self.id>}:<req.a.0>", key = "x", ttl = "1m30s", wait = w, service = "s", renew = false, crate = "d1""#,
                "pub async fn f(&self, Json(req): Json<R>, w: Duration) -> Result<(), E> { Ok(()) }",
            ),
            (
                r#"key = "k", ttl = Duration::from_millis(250)"#,
                "async fn f<T>() -> Result<impl Display, E> where T: Send { Ok(1) }",
            ),
        ];
        for (args, item) in cases {
            let out = expand(args, item);
            assert!(!out.contains("compile_error"), "{args} / {item}:\n{out}");
            assert!(out.contains("__private :: run"), "{out}");
        }
    }

    #[test]
    fn wrong_input_keeps_the_function_and_adds_errors() {
        let cases = [
            ("", PAY),
            ("key", PAY),
            ("key =", PAY),
            ("key = ,", PAY),
            (r#"key = "a" key = "b""#, PAY),
            (r#"key = "<", ttl"#, PAY),
            (r#"key = "a",,"#, PAY),
            (r#"= "a""#, PAY),
            (r#""a""#, PAY),
            ("key = 1 + ", PAY),
            (r#"key = "<>", key = "<", key = "", key = "<a.>", key = "<.a>", key = "<a..b>""#, PAY),
            (r#"key = "<r#>", key = "<self>", key = "<0>", key = "<a.01>", key = "<é>""#, PAY),
            (r#"key = "a", crate = , ttl = "1s""#, PAY),
            (r#"key = "a", crate = "", wait = "1s""#, PAY),
            (r#"key = "a", crate = "1 + 1""#, PAY),
            (r#"key = "a", ttl = "99999999999999999999999h""#, PAY),
            (r#"key = "a", ttl = -1.5, wait = 'c', service = 1, renew = "yes""#, PAY),
            (r#"key = "a", r#type = 1, fn = 2, _ = 3"#, PAY),
            (r#"key = "a""#, "fn pay() -> Result<(), E> { Ok(()) }"),
            (r#"key = "a""#, "async fn pay() -> Result<(), E>;"),
            (r#"key = "a""#, "struct Pay;"),
            (r#"key = "a""#, ""),
            (r#"key = "a""#, "async fn"),
            (r#"key = "a""#, "async fn pay() -> {}"),
        ];
        for (args, item) in cases {
            let out = expand(args, item);
            assert!(out.contains("compile_error"), "no error for {args} / {item}:\n{out}");
            assert!(!out.contains("__private :: run"), "expanded anyway: {args} / {item}:\n{out}");
        }
    }
}
