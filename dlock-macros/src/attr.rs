//! The options inside `#[distributed_lock(...)]`, parsed into [`Args`].
//!
//! Parsing goes on after a wrong option where it can (a repeated option, a value of the wrong
//! form, an unknown `name = value`), so one compile shows every mistake in the attribute.

use proc_macro2::Span;
use proc_macro2::TokenStream;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Expr, Ident, Lit, LitBool, LitStr, Path, Token};

use crate::duration::{self, DurationArg};
use crate::errors::Errors;
use crate::suggest;
use crate::tokens::{string_literal, ungroup};

mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(service);
    syn::custom_keyword!(renew);
}

/// Every option, in the order the docs list them.
const OPTIONS: &[&str] = &["key", "ttl", "wait", "service", "renew", "crate"];

/// Names people reach for that mean one of our options, for the "did you mean" hint.
const ALIASES: &[(&str, &str)] = &[
    ("keys", "key"),
    ("name", "key"),
    ("lease", "ttl"),
    ("expiry", "ttl"),
    ("expire", "ttl"),
    ("expires", "ttl"),
    ("timeout", "wait"),
    ("wait_timeout", "wait"),
    ("acquire_timeout", "wait"),
    ("backend", "service"),
    ("auto_renew", "renew"),
    ("renewal", "renew"),
    ("krate", "crate"),
    ("dlock", "crate"),
];

/// The parsed attribute. Only syntax and literal values are checked here; what needs the
/// function too (placeholders, keys given twice) is checked in `valid.rs`.
pub(crate) struct Args {
    /// `key = "..."`, in the order written; at least one.
    pub keys: Vec<LitStr>,
    pub ttl: Option<DurationArg>,
    pub wait: Option<DurationArg>,
    pub service: Option<Service>,
    pub renew: Option<LitBool>,
    /// `crate = path` or `crate = "path"`.
    pub krate: Option<Path>,
}

/// `service = "name"` or `service = SOME_CONST` (any `&'static str` expression).
pub(crate) enum Service {
    Literal(LitStr),
    Expr(Box<Expr>),
}

impl Args {
    /// Parses the attribute's arguments. Wrong options are recorded in `errors` and parsing
    /// goes on, so the keys that were read can still be checked against the function; `None`
    /// only when the syntax is too broken to go on.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Option<Args> {
        let parser = |input: ParseStream<'_>| parse_args(input, errors);
        match parser.parse2(tokens) {
            Ok(args) => Some(args),
            Err(error) => {
                errors.push(error);
                None
            }
        }
    }
}

fn parse_args(input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<Args> {
    let mut args = Args { keys: Vec::new(), ttl: None, wait: None, service: None, renew: None, krate: None };
    // Whether a `key` (even a wrong one) or an unknown option was written: then a missing
    // key is not worth an error of its own.
    let mut key_or_unknown = false;

    while !input.is_empty() {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::key) {
            input.parse::<kw::key>()?;
            key_or_unknown = true;
            let value = value_expr(input, "key")?;
            match key_literal(value) {
                Ok(lit) => args.keys.push(lit),
                Err(e) => errors.push(e),
            }
        } else if lookahead.peek(kw::ttl) {
            let name: kw::ttl = input.parse()?;
            let value = value_expr(input, "ttl")?;
            errors.check_unique(args.ttl.is_some(), name.span, "ttl");
            match duration::from_expr("ttl", value) {
                Ok(ttl) => args.ttl = args.ttl.take().or(Some(ttl)),
                Err(e) => errors.push(e),
            }
        } else if lookahead.peek(kw::wait) {
            let name: kw::wait = input.parse()?;
            let value = value_expr(input, "wait")?;
            errors.check_unique(args.wait.is_some(), name.span, "wait");
            match duration::from_expr("wait", value) {
                Ok(wait) => args.wait = args.wait.take().or(Some(wait)),
                Err(e) => errors.push(e),
            }
        } else if lookahead.peek(kw::service) {
            let name: kw::service = input.parse()?;
            let value = value_expr(input, "service")?;
            errors.check_unique(args.service.is_some(), name.span, "service");
            match service(value) {
                Ok(service) => args.service = args.service.take().or(Some(service)),
                Err(e) => errors.push(e),
            }
        } else if lookahead.peek(kw::renew) {
            let name: kw::renew = input.parse()?;
            let value = value_expr(input, "renew")?;
            errors.check_unique(args.renew.is_some(), name.span, "renew");
            match renew(value) {
                Ok(renew) => args.renew = args.renew.take().or(Some(renew)),
                Err(e) => errors.push(e),
            }
        } else if lookahead.peek(Token![crate]) {
            let name: Token![crate] = input.parse()?;
            expect_eq(input, "crate")?;
            let path = crate_path(input)?;
            errors.check_unique(args.krate.is_some(), name.span, "crate");
            args.krate = args.krate.take().or(Some(path));
        } else if input.peek(Ident::peek_any) {
            let name = input.call(Ident::parse_any)?;
            errors.push(unknown_option(&name));
            key_or_unknown = true;
            // Skip `= value` so the options after this one are still checked.
            if input.peek(Token![=]) {
                input.parse::<Token![=]>()?;
                input.parse::<Expr>()?;
            } else {
                break;
            }
        } else if input.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            return Err(syn::Error::new(
                lit.span(),
                format!("a key must be named: write `key = {}`", quote::ToTokens::to_token_stream(&lit)),
            ));
        } else {
            return Err(lookahead.error());
        }

        if input.is_empty() {
            break;
        }
        if !input.peek(Token![,]) {
            return Err(input.error("expected `,` between options"));
        }
        input.parse::<Token![,]>()?;
    }

    if !key_or_unknown {
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing `key`: #[distributed_lock] needs at least one lock key, \
                 e.g. #[distributed_lock(key = \"user:<user_id>\")]",
        ));
    }
    Ok(args)
}

/// Parses `= <expr>` after an option name.
fn value_expr(input: ParseStream<'_>, option: &str) -> syn::Result<Expr> {
    expect_eq(input, option)?;
    input.parse()
}

fn expect_eq(input: ParseStream<'_>, option: &str) -> syn::Result<()> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        Ok(())
    } else {
        Err(input.error(format!("expected `=` after `{option}`, as in `{}`", example(option))))
    }
}

fn example(option: &str) -> &'static str {
    match option {
        "key" => "key = \"user:<user_id>\"",
        "ttl" => "ttl = \"10s\"",
        "wait" => "wait = \"5s\"",
        "service" => "service = \"payments\"",
        "renew" => "renew = false",
        _ => "crate = dlock1",
    }
}

fn key_literal(value: Expr) -> syn::Result<LitStr> {
    match string_literal(&value) {
        Some(lit) if lit.suffix().is_empty() => Ok(lit.clone()),
        _ => Err(syn::Error::new_spanned(
            ungroup(&value),
            "`key` must be a string literal, e.g. `key = \"user:<user_id>\"`; \
             `<name>` inside it is replaced by the parameter `name` when the function is called",
        )),
    }
}

fn service(value: Expr) -> syn::Result<Service> {
    match ungroup(&value) {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => {
            if lit.value().is_empty() {
                Err(syn::Error::new(
                    lit.span(),
                    "`service` must name a service registered with `dlock::register(name, ..)`; \
                     it cannot be empty (leave `service` out to use the global service)",
                ))
            } else {
                Ok(Service::Literal(lit.clone()))
            }
        }
        Expr::Lit(other) => Err(syn::Error::new_spanned(
            other,
            "`service` expects the name a service was registered under, \
             e.g. `service = \"payments\"`",
        )),
        _ => Ok(Service::Expr(Box::new(value))),
    }
}

fn renew(value: Expr) -> syn::Result<LitBool> {
    match ungroup(&value) {
        Expr::Lit(syn::ExprLit { lit: Lit::Bool(lit), .. }) => Ok(lit.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            "`renew` expects `true` or `false` (without quotes), e.g. `renew = false`",
        )),
    }
}

/// `crate = dlock1`, `crate = ::dlock1`, `crate = crate::deps::dlock` or the same in quotes.
fn crate_path(input: ParseStream<'_>) -> syn::Result<Path> {
    const MESSAGE: &str = "`crate` expects the path of the dlock crate as you renamed it, \
                           e.g. `crate = dlock1` or `crate = \"dlock1\"`";
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        lit.parse_with(Path::parse_mod_style).map_err(|_| syn::Error::new(lit.span(), MESSAGE))
    } else if input.peek(Token![::]) || input.peek(Ident::peek_any) {
        input.call(Path::parse_mod_style)
    } else {
        let value: Expr = input.parse()?;
        Err(syn::Error::new(value.span(), MESSAGE))
    }
}

fn unknown_option(name: &Ident) -> syn::Error {
    let written = name.unraw().to_string();
    let hint = ALIASES
        .iter()
        .find(|(alias, _)| *alias == written)
        .map(|(_, option)| *option)
        .or_else(|| suggest::closest(&written, OPTIONS.iter().copied()))
        .map(|option| format!("did you mean `{option}`? "))
        .unwrap_or_default();
    syn::Error::new(
        name.span(),
        format!(
            "unknown option `{written}`; {hint}valid options: {}",
            suggest::list(OPTIONS.iter().copied())
        ),
    )
}
