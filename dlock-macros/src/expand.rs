//! From the parsed attribute and function to the rewritten function.
//!
//! ```text
//! #[attrs] vis async fn name<G>(params) -> Ret where .. {
//!     ::dlock::__private::check_result::<Ret>();          // spanned at `Ret`
//!     let __dlock_spec = ::dlock::__private::LockSpec::new(
//!         From::from([::dlock::__private::format!("user:{}", key_part(&user_id))]),
//!     ).ttl(..).wait(..).service(..).renew(..);
//!     ::dlock::__private::run(__dlock_spec, async move {
//!         if false { let __dlock_fake: Ret = loop {}; return __dlock_fake; }
//!         { original body }
//!     }).await
//! }
//! ```
//!
//! The keys are built before the body is moved into its own `async move` block, so the body
//! keeps every argument and `return` / `?` inside it mean what they meant before. The generated
//! skeleton uses `Span::mixed_site()`, so its locals can neither clash with nor be named by
//! user code, and every path is absolute (`#krate::__private::…`).

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Attribute, Ident, LitStr, Path, ReturnType, Signature, Token, Type, Visibility};

use crate::attr::{Args, Errors, Service};
use crate::bindings::Bindings;
use crate::template::{Key, Root, Value};

/// The whole macro: never panics, and on wrong input returns the function unchanged plus
/// `compile_error!`s, so the rest of the crate (and IDE completion) keeps working.
pub(crate) fn distributed_lock(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = syn::parse2::<Args>(args)
        .map_err(|error| errors.push(error))
        .ok();
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
                format!(
                    "the key {:?} is given twice; give each lock key once",
                    lit.value()
                ),
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
    let has_fn = item
        .clone()
        .into_iter()
        .any(|tt| matches!(&tt, TokenTree::Ident(ident) if ident == "fn"));
    if has_fn {
        error
    } else {
        syn::Error::new(
            Span::call_site(),
            "#[distributed_lock] can only be applied to an `async fn`",
        )
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
        Ok(LockedFn {
            outer_attrs,
            vis,
            sig,
            body,
        })
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
    let LockedFn {
        outer_attrs,
        vis,
        sig,
        body,
    } = func;
    let Some(Body {
        inner_attrs,
        brace_span,
        stmts,
    }) = body
    else {
        // `validate` rejected this already; keep the declaration as it was.
        return quote!(#(#outer_attrs)* #vis #sig;);
    };
    let krate = args
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::dlock));
    let mixed = Span::mixed_site();

    // `Result<T, E>` with `E: From<dlock::Error>`: checked by the trait, not by the syntax,
    // so `anyhow::Result<T>`, `io::Result<T>` and aliases work. An `impl Trait` inside the
    // return type cannot be named in the body, so it is erased to `_` for the inference
    // hint, and the check is left to the bound on `run`.
    let (ret, ret_span) = match &sig.output {
        ReturnType::Type(_, ty) => ((**ty).clone(), ty.span()),
        ReturnType::Default => (syn::parse_quote!(()), sig.ident.span()),
    };
    let mut eraser = ImplTraitEraser(false);
    let mut fake_ret = ret.clone();
    eraser.visit_type_mut(&mut fake_ret);
    let check = if eraser.0 {
        TokenStream::new()
    } else {
        quote_spanned!(ret_span=> #krate::__private::check_result::<#ret>();)
    };
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

    let keys = keys.iter().map(|key| key_expr(key, &krate));
    let mut options = TokenStream::new();
    if let Some(ttl) = &args.ttl {
        let ttl = ttl.to_tokens(&krate);
        options.extend(quote_spanned!(mixed=> .ttl(#ttl)));
    }
    if let Some(wait) = &args.wait {
        let wait = wait.to_tokens(&krate);
        options.extend(quote_spanned!(mixed=> .wait(#wait)));
    }
    match &args.service {
        Some(Service::Literal(lit)) => options.extend(quote_spanned!(mixed=> .service(#lit))),
        Some(Service::Expr(expr)) => options.extend(quote_spanned!(mixed=> .service(#expr))),
        None => {}
    }
    if let Some(renew) = &args.renew {
        options.extend(quote_spanned!(mixed=> .renew(#renew)));
    }

    let mut block = Group::new(Delimiter::Brace, stmts);
    block.set_span(brace_span.join());
    let mut fn_body = Group::new(
        Delimiter::Brace,
        quote_spanned! {mixed=>
            #(#inner_attrs)*
            #check
            let __dlock_spec = #krate::__private::LockSpec::new(
                ::core::convert::From::from([#(#keys),*]),
            )#options;
            #krate::__private::run(__dlock_spec, async move {
                #fake_return
                #block
            })
            .await
        },
    );
    fn_body.set_span(brace_span.join());

    quote!(#(#outer_attrs)* #vis #sig #fn_body)
}

/// `format!("user:{}", key_part(&user_id))` for one key.
fn key_expr(key: &Key, krate: &Path) -> TokenStream {
    let mixed = Span::mixed_site();
    let lit_span = key.lit.span();
    let format = LitStr::new(&key.format_string(), mixed);
    let values = key.values().map(|value| {
        // The call is spanned at the key, its argument at the binding: a value that is not
        // `Display` is reported on the parameter, with "required by a bound introduced by
        // this call" on the key.
        let call = quote_spanned!(lit_span=> #krate::__private::key_part);
        let arg = value_expr(value);
        quote_spanned!(mixed=> #call(&#arg))
    });
    quote_spanned!(mixed=> #krate::__private::format!(#format #(, #values)*))
}

fn value_expr(value: &Value) -> TokenStream {
    let root = match &value.root {
        Root::SelfValue(span) => Token![self](*span).into_token_stream(),
        Root::Binding(ident) => ident.into_token_stream(),
    };
    let fields = &value.fields;
    quote!(#root #(.#fields)*)
}

/// Replaces each `impl Trait` in a type with `_`, which a `let` type may contain; records
/// whether there was one.
struct ImplTraitEraser(bool);

impl VisitMut for ImplTraitEraser {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(impl_trait) = ty {
            self.0 = true;
            *ty = Type::Infer(syn::TypeInfer {
                underscore_token: Token![_](impl_trait.impl_token.span),
            });
        } else {
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
}
