//! `ttl = ...` and `wait = ...`: a duration string read at compile time, or any expression of
//! type `std::time::Duration`.
//!
//! A string is whole numbers each followed by one of exactly these units: `d`, `h`, `m`, `s`,
//! `ms`; largest unit first, each unit once, no spaces: `"10s"`, `"500ms"`, `"1m30s"`, `"1d12h"`.
//! One spelling per duration, so a key reviewer never has to ask whether `"5M"` is minutes or
//! months: everything else is an error that says what to write instead.
//!
//! Whether a `ttl` is within `dlock::MIN_TTL..=dlock::MAX_TTL` is not checked here: the
//! expansion has the compiler check it against dlock's own constants (see `expand.rs`).

use std::time::Duration;

use syn::{Expr, Lit, LitStr, UnOp};

use crate::tokens::{string_literal, ungroup};

pub(crate) enum DurationArg {
    /// `"10s"`, already read.
    Literal(DurationLiteral),
    /// Anything else; the compiler checks that it is a `Duration`.
    Expr(Box<Expr>),
}

pub(crate) struct DurationLiteral {
    pub value: Duration,
    pub lit: LitStr,
}

/// The units, largest first, with their length in milliseconds.
const UNITS: [(&str, u128, &str); 5] = [
    ("d", 86_400_000, "days"),
    ("h", 3_600_000, "hours"),
    ("m", 60_000, "minutes"),
    ("s", 1_000, "seconds"),
    ("ms", 1, "milliseconds"),
];

const UNIT_LIST: &str = "units: ms, s, m, h, d";

const FORMS: &str = "write whole numbers with units, largest first, e.g. \"10s\", \"500ms\" or \
                     \"1m30s\" (units: ms, s, m, h, d), or pass an expression of type \
                     `std::time::Duration`";

/// Reads the value of the option `option` (`"ttl"` or `"wait"`).
pub(crate) fn from_expr(option: &str, value: Expr) -> syn::Result<DurationArg> {
    if let Some(lit) = string_literal(&value) {
        return literal(option, lit).map(DurationArg::Literal);
    }
    match ungroup(&value) {
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

fn literal(option: &str, lit: &LitStr) -> syn::Result<DurationLiteral> {
    let text = lit.value();
    let error = |message: String| syn::Error::new(lit.span(), message);
    if !lit.suffix().is_empty() {
        return Err(error(format!("invalid `{option}`: a string literal with a suffix; {FORMS}")));
    }
    let value = parse(&text).map_err(|problem| {
        error(match problem {
            Problem::Hint(hint) => {
                format!("invalid `{option}` {text:?}: {}", hint.replace("{option}", option))
            }
            Problem::Plain(why) => format!("invalid `{option}` {text:?}: {why}; {FORMS}"),
        })
    })?;
    if option == "ttl" && value.is_zero() {
        return Err(error(
            "`ttl` must be greater than zero: it is how long the lock stays held if this \
             process stops renewing it; e.g. `ttl = \"10s\"`"
                .to_owned(),
        ));
    }
    Ok(DurationLiteral { value, lit: lit.clone() })
}

/// Why a string is not a duration.
#[derive(Debug, PartialEq)]
enum Problem {
    /// A specific fix, complete; `{option}` stands for the option's name.
    Hint(String),
    /// What is wrong; the message goes on with the forms that are accepted.
    Plain(&'static str),
}

/// A number as written and the unit after it.
struct Part<'a> {
    number: &'a str,
    unit: &'a str,
}

/// What a written unit means.
enum Unit {
    /// One of [`UNITS`], by index.
    Known(usize),
    /// Another spelling of one of [`UNITS`] (`sec`, `minutes`, `H`, …).
    Alias(usize),
    /// `M`: minutes in lower case, months in some libraries.
    Months,
    /// A unit this crate has no letter for, as a number of days (weeks, years).
    Days(&'static str, u128),
    /// Microseconds or nanoseconds.
    TooFine,
    Unknown,
}

fn unit(written: &str) -> Unit {
    if let Some(index) = UNITS.iter().position(|(unit, ..)| *unit == written) {
        return Unit::Known(index);
    }
    match written {
        "M" => Unit::Months,
        "mo" | "mon" | "mos" | "month" | "months" => Unit::Days("months", 0),
        "y" | "Y" | "yr" | "yrs" | "year" | "years" => Unit::Days("years", 365),
        "w" | "W" | "wk" | "wks" | "week" | "weeks" => Unit::Days("weeks", 7),
        "us" | "µs" | "μs" | "usec" | "usecs" | "micros" | "microsecond" | "microseconds" | "ns" | "nsec"
        | "nsecs" | "nanos" | "nanosecond" | "nanoseconds" => Unit::TooFine,
        _ => match written.to_ascii_lowercase().as_str() {
            "day" | "days" => Unit::Alias(0),
            "hr" | "hrs" | "hour" | "hours" => Unit::Alias(1),
            "min" | "mins" | "minute" | "minutes" => Unit::Alias(2),
            "sec" | "secs" | "second" | "seconds" => Unit::Alias(3),
            "msec" | "msecs" | "millis" | "millisecond" | "milliseconds" => Unit::Alias(4),
            lower => match UNITS.iter().position(|(unit, ..)| *unit == lower) {
                // `S`, `H`, `D`, `MS`, `Ms`: the unit in the wrong case.
                Some(index) => Unit::Alias(index),
                None => Unit::Unknown,
            },
        },
    }
}

/// Reads a duration string; see the module docs for the accepted forms.
fn parse(text: &str) -> Result<Duration, Problem> {
    if text.trim().is_empty() {
        return Err(Problem::Plain("the string is empty"));
    }
    if text.trim_start().starts_with('-') {
        return Err(Problem::Plain("a duration cannot be negative"));
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let parts = split(&compact).ok_or(Problem::Plain("not a duration"))?;

    // Read every part as far as possible, so a hint can show the whole duration rewritten.
    let mut total: Option<u128> = Some(0);
    let mut exact = true;
    let mut first_problem: Option<Problem> = None;
    let mut previous: Option<usize> = None;
    let mut in_order = true;
    for part in &parts {
        let millis_per = match unit(part.unit) {
            Unit::Known(index) => {
                in_order &= previous.is_none_or(|p| p < index);
                previous = Some(index);
                UNITS[index].1
            }
            Unit::Alias(index) => {
                first_problem.get_or_insert(Problem::Hint(format!(
                    "`{}` is not a unit here; did you mean `{{option}} = \"{{rewritten}}\"`? ({UNIT_LIST})",
                    part.unit
                )));
                UNITS[index].1
            }
            Unit::Months => {
                first_problem.get_or_insert(Problem::Hint(format!(
                    "did you mean `{{option}} = \"{}m\"` (minutes)? months are not a unit here \
                     ({UNIT_LIST})",
                    part.number
                )));
                exact = false;
                0
            }
            Unit::Days("months", _) => {
                first_problem.get_or_insert(Problem::Hint(format!(
                    "months are not a unit here: write days, hours or minutes, e.g. \
                     `{{option}} = \"30d\"` ({UNIT_LIST})"
                )));
                exact = false;
                0
            }
            Unit::Days(what, days) => {
                // A year or more is past `dlock::MAX_TTL` for a ttl: say so with the hint.
                let long = if days >= 365 {
                    "; a `ttl` that long is past `dlock::MAX_TTL` (a lease is renewed while held, so \
                     seconds or minutes are enough)"
                } else {
                    ""
                };
                first_problem.get_or_insert(Problem::Hint(format!(
                    "{what} are not a unit here: write days, `{{option}} = \"{{rewritten}}\"`{long} \
                     ({UNIT_LIST})"
                )));
                days * UNITS[0].1
            }
            Unit::TooFine => {
                first_problem.get_or_insert(Problem::Hint(format!(
                    "`{}` is finer than dlock can time a lock; the smallest unit is `ms`, \
                     e.g. `{{option}} = \"1ms\"` ({UNIT_LIST})",
                    part.unit
                )));
                exact = false;
                0
            }
            Unit::Unknown if part.unit.is_empty() => {
                first_problem.get_or_insert(Problem::Hint(format!(
                    "`{}` has no unit: write `{{option}} = \"{0}s\"` for seconds or \
                     `\"{0}ms\"` for milliseconds ({UNIT_LIST})",
                    part.number
                )));
                exact = false;
                0
            }
            Unit::Unknown => {
                first_problem.get_or_insert(Problem::Hint(format!("unknown unit {:?}; {FORMS}", part.unit)));
                exact = false;
                0
            }
        };
        match millis(part.number, millis_per) {
            Some(Millis::Exact(value)) => total = total.and_then(|t| t.checked_add(value)),
            Some(Millis::Fraction(value)) => {
                first_problem.get_or_insert(Problem::Hint(
                    "whole numbers only: write `{option} = \"{rewritten}\"`".to_owned(),
                ));
                total = total.and_then(|t| t.checked_add(value));
            }
            Some(Millis::Finer) => {
                first_problem.get_or_insert(Problem::Plain(
                    "whole numbers only, and nothing finer than a millisecond",
                ));
                exact = false;
            }
            None if part.number.contains('.') && part.number.split('.').count() > 2 => {
                first_problem.get_or_insert(Problem::Plain("not a duration"));
                exact = false;
            }
            None => {
                first_problem.get_or_insert(Problem::Plain("the number is too large"));
                exact = false;
            }
        }
    }

    let duration = total.and_then(|ms| {
        let secs = u64::try_from(ms / 1000).ok()?;
        let nanos = u32::try_from(ms % 1000).ok()? * 1_000_000;
        Some(Duration::new(secs, nanos))
    });
    if first_problem.is_none() {
        if !in_order {
            first_problem = Some(Problem::Hint(
                "write the units from the largest to the smallest, each once: \
                 `{option} = \"{rewritten}\"`"
                    .to_owned(),
            ));
        } else if compact != text {
            first_problem =
                Some(Problem::Hint("write it without spaces: `{option} = \"{rewritten}\"`".to_owned()));
        }
    }
    match (first_problem, duration) {
        (None, Some(duration)) => Ok(duration),
        (None, None) => Err(Problem::Plain("the duration is too large")),
        (Some(Problem::Hint(hint)), duration) if hint.contains("{rewritten}") => match duration {
            Some(duration) if exact => Err(Problem::Hint(hint.replace("{rewritten}", &format(duration)))),
            _ => Err(Problem::Plain("not a duration")),
        },
        (Some(problem), _) => Err(problem),
    }
}

/// Splits `"1m30s"` into `1`/`m`, `30`/`s`; `None` when it does not start with a number or a
/// number is followed by nothing that could be a unit and then more.
fn split(text: &str) -> Option<Vec<Part<'_>>> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let (number, after) = rest.split_at(number_len);
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() && !after.is_empty() {
            return None;
        }
        parts.push(Part { number, unit });
        rest = after;
    }
    Some(parts)
}

enum Millis {
    Exact(u128),
    /// Written with a fraction, which is a whole number of milliseconds.
    Fraction(u128),
    /// Written with a fraction finer than a millisecond.
    Finer,
}

/// `number` (digits, maybe with one `.`) times `per` milliseconds; `None` when it is not a
/// number or too large.
fn millis(number: &str, per: u128) -> Option<Millis> {
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) if !fraction.contains('.') => (whole, Some(fraction)),
        Some(_) => return None,
        None => (number, None),
    };
    if whole.is_empty() && fraction.is_none_or(str::is_empty) {
        return None;
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let whole = whole.checked_mul(per)?;
    let Some(fraction) = fraction.filter(|f| !f.is_empty()) else {
        return Some(if number.contains('.') { Millis::Fraction(whole) } else { Millis::Exact(whole) });
    };
    let digits = u32::try_from(fraction.len()).ok().filter(|&d| d <= 30)?;
    let scale = 10u128.checked_pow(digits)?;
    let part = fraction.parse::<u128>().ok()?.checked_mul(per)?;
    if part % scale == 0 {
        whole.checked_add(part / scale).map(Millis::Fraction)
    } else {
        Some(Millis::Finer)
    }
}

/// `duration` as this module writes it: `"1m30s"`, `"500ms"`, `"0s"`.
pub(crate) fn format(duration: Duration) -> String {
    let mut millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut text = String::new();
    for (unit, per, _) in UNITS {
        if millis >= per {
            text.push_str(&format!("{}{unit}", millis / per));
            millis %= per;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(option: &str, src: &str) -> Result<Option<Duration>, String> {
        let expr: Expr = syn::parse_str(src).map_err(|e| e.to_string())?;
        match from_expr(option, expr) {
            Ok(DurationArg::Literal(d)) => Ok(Some(d.value)),
            Ok(DurationArg::Expr(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn error(option: &str, text: &str) -> String {
        match read(option, &format!("{text:?}")) {
            Ok(d) => format!("accepted as {d:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn exactly_the_documented_forms() {
        let ms = Duration::from_millis;
        let cases = [
            ("10s", ms(10_000)),
            ("500ms", ms(500)),
            ("1m30s", ms(90_000)),
            ("2h", ms(7_200_000)),
            ("1d", ms(86_400_000)),
            ("1d2h3m4s5ms", ms(93_784_005)),
            ("0s", Duration::ZERO),
            ("90s", ms(90_000)),
            ("007s", ms(7_000)),
        ];
        for (text, expected) in cases {
            assert_eq!(read("wait", &format!("{text:?}")), Ok(Some(expected)), "{text}");
        }
    }

    #[test]
    fn expressions_pass_through() {
        assert_eq!(read("ttl", "Duration::from_millis(250)"), Ok(None));
        assert_eq!(read("ttl", "TTL"), Ok(None));
    }

    #[test]
    fn wrong_units_get_the_intended_one() {
        let cases = [
            ("5M", "did you mean `ttl = \"5m\"` (minutes)? months are not a unit here"),
            ("2y", "years are not a unit here: write days, `ttl = \"730d\"`"),
            ("2w", "weeks are not a unit here: write days, `ttl = \"14d\"`"),
            ("3 months", "months are not a unit here"),
            ("10 seconds", "`seconds` is not a unit here; did you mean `ttl = \"10s\"`?"),
            ("1 min 30 sec", "`min` is not a unit here; did you mean `ttl = \"1m30s\"`?"),
            ("10S", "`S` is not a unit here; did you mean `ttl = \"10s\"`?"),
            ("100MS", "did you mean `ttl = \"100ms\"`?"),
            ("2hrs", "did you mean `ttl = \"2h\"`?"),
            ("500us", "`us` is finer than dlock can time a lock"),
            ("5ns", "`ns` is finer"),
            ("1m 30s", "write it without spaces: `ttl = \"1m30s\"`"),
            ("10 s", "write it without spaces: `ttl = \"10s\"`"),
            ("30s1m", "from the largest to the smallest, each once: `ttl = \"1m30s\"`"),
            ("1m1m", "each once: `ttl = \"2m\"`"),
            ("1.5s", "whole numbers only: write `ttl = \"1s500ms\"`"),
            ("0.25h", "whole numbers only: write `ttl = \"15m\"`"),
            ("1.0001s", "nothing finer than a millisecond"),
            ("1m30", "`30` has no unit: write `ttl = \"30s\"`"),
            ("10 parsecs", "unknown unit \"parsecs\""),
            ("ten seconds", "not a duration"),
            ("soon", "not a duration"),
            ("", "the string is empty"),
            ("-5s", "cannot be negative"),
            ("1.2.3s", "not a duration"),
            ("99999999999999999999999999999999999999999d", "too large"),
            ("999999999999999999999999d", "too large"),
        ];
        for (text, expected) in cases {
            let message = error("ttl", text);
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn literal_errors() {
        let zero = read("ttl", r#""0s""#).unwrap_err();
        assert!(zero.contains("greater than zero"), "{zero}");
        let bare = read("wait", "10").unwrap_err();
        assert!(bare.contains("`wait = 10` has no unit"), "{bare}");
        let neg = read("ttl", "-5").unwrap_err();
        assert!(neg.contains("negative"), "{neg}");
        let boolean = read("ttl", "true").unwrap_err();
        assert!(boolean.contains("expects a duration"), "{boolean}");
        // No lower bound on `wait`, and the bounds of `ttl` are checked by the compiler.
        assert_eq!(read("wait", r#""1ms""#), Ok(Some(Duration::from_millis(1))));
        assert_eq!(read("ttl", r#""1ms""#), Ok(Some(Duration::from_millis(1))));
    }

    #[test]
    fn formats_as_it_reads() {
        for text in ["1d2h3m4s5ms", "1m30s", "500ms", "0s", "365d"] {
            assert_eq!(parse(text).map(format), Ok(text.to_owned()));
        }
    }
}
