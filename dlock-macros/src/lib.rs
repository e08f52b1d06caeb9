//! The `#[distributed_lock]` attribute of [dlock](https://docs.rs/dlock).
//!
//! Use it through the `dlock` crate (`dlock::distributed_lock`), which re-exports it and
//! provides the runtime the generated code calls. The attribute's documentation is on
//! [`macro@distributed_lock`].
//!
//! The way through this crate: `attr.rs` reads the options (with `duration.rs`), `item.rs` the
//! function; `valid.rs` checks them together (keys against `bindings.rs`, via `template.rs`);
//! then `expand.rs` (with `params.rs`) writes the new function, or `fallback.rs` the old one
//! with the errors. `tokens.rs`, `errors.rs` and `suggest.rs` are leaves every step may use.

mod attr;
mod bindings;
mod duration;
mod errors;
mod expand;
mod fallback;
mod item;
mod params;
mod suggest;
mod template;
mod tokens;
mod valid;

use proc_macro::TokenStream;

#[doc = include_str!("attribute.md")]
#[proc_macro_attribute]
pub fn distributed_lock(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_attribute(args.into(), item.into()).into()
}

/// The whole macro. It never panics: on wrong input it returns the function unchanged plus
/// `compile_error!`s.
fn expand_attribute(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    match valid::check(args, &item) {
        Ok(checked) => expand::expand(checked),
        Err(rejected) => fallback::expand(item, rejected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(args: &str, item: &str) -> String {
        match (args.parse(), item.parse()) {
            (Ok(args), Ok(item)) => expand_attribute(args, item).to_string(),
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
            (
                r#"key = "<a>:<c>""#,
                "async fn f(mut self, (a, _): (u8, u8), _: u8, ref c: u8, P { d, .. }: P) -> Result<(), E> { Ok(()) }",
            ),
        ];
        for (args, item) in cases {
            let out = expand(args, item);
            assert!(!out.contains("compile_error"), "{args} / {item}:\n{out}");
            assert!(out.contains("__private :: run_locked"), "{out}");
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
            (
                r#"key = "{user_id}", key = "{self}""#,
                "async fn f(&self, user_id: u8) -> Result<(), E> { Ok(()) }",
            ),
            (r#"key = "a", crate = , ttl = "1s""#, PAY),
            (r#"key = "a", crate = "", wait = "1s""#, PAY),
            (r#"key = "a", crate = "1 + 1""#, PAY),
            (r#"key = "a", ttl = "99999999999999999999999h""#, PAY),
            (r#"key = "a", ttl = "5M", wait = "2y", ttl = "1 m""#, PAY),
            (r#"key = "a", ttl = -1.5, wait = 'c', service = 1, renew = "yes""#, PAY),
            (r#"key = "a", r#type = 1, fn = 2, _ = 3"#, PAY),
            (r#"key = "a""#, "fn pay() -> Result<(), E> { Ok(()) }"),
            (r#"key = "a""#, "async fn pay() -> Result<(), E>;"),
            (r#"key = "a""#, "async fn pay() -> impl Display { 1 }"),
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

    #[test]
    fn a_wrong_input_still_gets_its_ttl_checked() {
        let out = expand(r#"key = "<nope>", ttl = "400d""#, PAY);
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("ttl_literal_error"), "{out}");
    }
}
