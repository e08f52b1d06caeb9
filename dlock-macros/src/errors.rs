//! [`Errors`]: every mistake found in one attribute, reported together. A leaf.

use proc_macro2::Span;

/// Collects errors so that all of them are reported at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(existing) => existing.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Records that `option` was given again, at `span`, when `seen`.
    pub(crate) fn check_unique(&mut self, seen: bool, span: Span, option: &str) {
        if seen {
            self.push(syn::Error::new(
                span,
                format!(
                    "`{option}` is given more than once; keep one \
                     (only `key` may be repeated, to hold several locks)"
                ),
            ));
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}
