//! The `#[distributed_lock]` attribute of [dlock](https://docs.rs/dlock).
//!
//! Use it through the `dlock` crate (`dlock::distributed_lock`), which re-exports it and
//! provides the runtime the generated code calls. The attribute's documentation is on
//! [`macro@distributed_lock`].

mod attr;
mod bindings;
mod duration;
mod expand;
mod suggest;
mod template;

use proc_macro::TokenStream;

#[doc = include_str!("attribute.md")]
#[proc_macro_attribute]
pub fn distributed_lock(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::distributed_lock(args.into(), item.into()).into()
}
