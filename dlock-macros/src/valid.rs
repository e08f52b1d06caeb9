//! Reads the attribute and the function and checks what needs both: every key against the
//! function's bindings, no key given twice. The one place that decides whether the input can
//! be expanded; every mistake found is reported together.

use proc_macro2::TokenStream;

use crate::attr::Args;
use crate::bindings::Bindings;
use crate::errors::Errors;
use crate::item::LockedFn;
use crate::template::Key;

/// Input that can be expanded.
pub(crate) struct Checked {
    pub func: LockedFn,
    pub args: Args,
    pub keys: Vec<Key>,
}

/// Input that cannot: the errors, and what could be read, for the fallback.
pub(crate) struct Rejected {
    pub error: syn::Error,
    pub func: Option<LockedFn>,
    pub args: Option<Args>,
}

/// Parses and checks `#[distributed_lock(args)] item`.
pub(crate) fn check(args: TokenStream, item: &TokenStream) -> Result<Checked, Box<Rejected>> {
    let mut errors = Errors::default();
    let args = Args::parse(args, &mut errors);
    let func = match LockedFn::parse_item(item) {
        Ok(func) => func,
        Err(error) => {
            errors.push(error);
            return Err(rejected(errors, None, args));
        }
    };
    if let Err(error) = func.validate() {
        errors.push(error);
    }
    let Some(args) = args else {
        return Err(rejected(errors, Some(func), None));
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

    if errors.is_empty() {
        Ok(Checked { func, args, keys })
    } else {
        Err(rejected(errors, Some(func), Some(args)))
    }
}

fn rejected(errors: Errors, func: Option<LockedFn>, args: Option<Args>) -> Box<Rejected> {
    let error = match errors.finish() {
        Err(error) => error,
        // Not reached: every caller has pushed an error. Say so rather than panic.
        Ok(()) => syn::Error::new(proc_macro2::Span::call_site(), "#[distributed_lock]: invalid input"),
    };
    Box::new(Rejected { error, func, args })
}
