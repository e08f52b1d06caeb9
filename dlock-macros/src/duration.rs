//! `ttl = ...` and `wait = ...`: a duration string checked at compile time, or any expression
//! of type `std::time::Duration`.

use std::time::Duration;

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, Lit, LitStr, UnOp};

use crate::attr::ungroup;

pub(crate) enum DurationArg {
    /// `"10s"`, already parsed.
    Literal(Duration),
    /// Anything else; the compiler checks that it is a `Duration`.
    Expr(Box<Expr>),
}

/// `dlock::MIN_TTL`: the runtime rejects shorter leases, so a literal is checked here.
const MIN_TTL: Duration = Duration::from_millis(10);

const FORMS: &str = "write a number with a unit, e.g. \"10s\", \"500ms\" or \"1m30s\" \
                     (units: ms, s, m, h, d), or pass an expression of type \
                     `std::time::Duration`";

/// Reads the value of the option `option` (`"ttl"` or `"wait"`).
pub(crate) fn from_expr(option: &str, value: Expr) -> syn::Result<DurationArg> {
    match ungroup(&value) {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => {
            parse_literal(option, lit).map(DurationArg::Literal)
        }
        Expr::Lit(syn::ExprLit { lit: Lit::Int(_) | Lit::Float(_), .. }) => Err(no_unit(option, &value)),
        Expr::Unary(unary)
            if matches!(unary.op, UnOp::Neg(_))
                && matches!(
                    ungroup(&unary.expr),
                    Expr::Lit(syn::ExprLit { lit: Lit::Int(_) | Lit::Float(_), .. })
                ) =>
        {
            Err(syn::Error::new_spanned(&value, format!("`{option}` cannot be negative; {FORMS}")))
        }
        Expr::Lit(other) => {
            Err(syn::Error::new_spanned(other, format!("`{option}` expects a duration; {FORMS}")))
        }
        _ => Ok(DurationArg::Expr(Box::new(value))),
    }
}

fn no_unit(option: &str, value: &Expr) -> syn::Error {
    let number = quote::ToTokens::to_token_stream(value).to_string();
    syn::Error::new_spanned(
        value,
        format!(
            "`{option} = {number}` has no unit: write `{option} = \"{number}s\"` for seconds \
             or `\"{number}ms\"` for milliseconds, or pass an expression of type \
             `std::time::Duration`"
        ),
    )
}

fn parse_literal(option: &str, lit: &LitStr) -> syn::Result<Duration> {
    let text = lit.value();
    let invalid =
        |why: &str| syn::Error::new(lit.span(), format!("invalid `{option}` {text:?}: {why}; {FORMS}"));
    if !lit.suffix().is_empty() {
        return Err(invalid("a string literal with a suffix"));
    }
    let duration = humantime::parse_duration(&text).map_err(|error| {
        use humantime::DurationError as E;
        invalid(&match error {
            E::Empty => "the string is empty".to_owned(),
            E::UnknownUnit { unit, .. } if unit.is_empty() => "the number has no unit".to_owned(),
            E::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
            E::NumberOverflow => "the number is too large, or finer than 1ns".to_owned(),
            E::InvalidCharacter(_) | E::NumberExpected(_) => "not a duration".to_owned(),
        })
    })?;
    if option == "ttl" {
        if duration.is_zero() {
            return Err(syn::Error::new(
                lit.span(),
                "`ttl` must be greater than zero: it is how long the lock stays held \
                 if this process stops renewing it; e.g. `ttl = \"10s\"`",
            ));
        }
        if duration < MIN_TTL {
            return Err(syn::Error::new(
                lit.span(),
                format!(
                    "`ttl = {text:?}` is shorter than the minimum of 10ms: a lease that short \
                     cannot be renewed reliably; use e.g. `ttl = \"10s\"`"
                ),
            ));
        }
    }
    Ok(duration)
}

impl DurationArg {
    /// An expression of type `Duration`. A literal becomes a constant; an expression goes
    /// through `__private::duration`, so a wrong type is reported on the user's expression.
    /// `private(span)` is the path `dlock::__private` located at `span`.
    pub(crate) fn to_tokens(&self, private: &impl Fn(Span) -> TokenStream) -> TokenStream {
        match self {
            DurationArg::Literal(duration) => {
                let private = private(Span::mixed_site());
                let secs = Literal::u64_suffixed(duration.as_secs());
                let nanos = Literal::u32_suffixed(duration.subsec_nanos());
                quote!(#private::Duration::new(#secs, #nanos))
            }
            DurationArg::Expr(expr) => {
                let span = expr.span();
                let private = private(span);
                quote_spanned!(span=> #private::duration(#expr))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(option: &str, src: &str) -> Result<Option<Duration>, String> {
        let expr: Expr = syn::parse_str(src).map_err(|e| e.to_string())?;
        match from_expr(option, expr) {
            Ok(DurationArg::Literal(d)) => Ok(Some(d)),
            Ok(DurationArg::Expr(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn literals() {
        assert_eq!(parse("ttl", r#""10s""#), Ok(Some(Duration::from_secs(10))));
        assert_eq!(parse("ttl", r#""500ms""#), Ok(Some(Duration::from_millis(500))));
        assert_eq!(parse("ttl", r#""1m30s""#), Ok(Some(Duration::from_secs(90))));
        assert_eq!(parse("wait", r#""0s""#), Ok(Some(Duration::ZERO)));
    }

    #[test]
    fn expressions_pass_through() {
        assert_eq!(parse("ttl", "Duration::from_millis(250)"), Ok(None));
        assert_eq!(parse("ttl", "TTL"), Ok(None));
    }

    #[test]
    fn errors() {
        let zero = parse("ttl", r#""0s""#).unwrap_err();
        assert!(zero.contains("greater than zero"), "{zero}");
        let unit = parse("ttl", r#""10 parsecs""#).unwrap_err();
        assert!(unit.contains("unknown unit \"parsecs\""), "{unit}");
        let bare = parse("wait", "10").unwrap_err();
        assert!(bare.contains("`wait = 10` has no unit"), "{bare}");
        let empty = parse("ttl", r#""""#).unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
        let short = parse("ttl", r#""5ms""#).unwrap_err();
        assert!(short.contains("minimum of 10ms"), "{short}");
        assert_eq!(parse("wait", r#""5ms""#), Ok(Some(Duration::from_millis(5))));
        let neg = parse("ttl", "-5").unwrap_err();
        assert!(neg.contains("negative"), "{neg}");
        let huge = parse("ttl", r#""99999999999999999999s""#).unwrap_err();
        assert!(huge.contains("too large"), "{huge}");
        let boolean = parse("ttl", "true").unwrap_err();
        assert!(boolean.contains("expects a duration"), "{boolean}");
    }
}
