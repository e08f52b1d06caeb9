//! How the arguments reach the body: every one is moved into the body's `async move` block
//! and dropped there — inside the lock — in the order the function without the attribute
//! drops them.
//!
//! rustc lowers `async fn f(p0: T0, p1: T1)` to a body that starts with, per parameter in
//! order, `let __arg0 = __arg0; let p0 = __arg0;`; the locals are then dropped in reverse, so
//! for each parameter from the last to the first, its bindings and then what the pattern left
//! unbound. The body block here starts the same way (its *prologue*), per parameter:
//!
//! - `x` / `mut x`: kept in the signature (without `mut`), `let mut x = x;` in the body.
//! - A pattern that binds the whole value (`Json(req)`, `(a, b)`, `&x`): kept in the signature
//!   (without `mut`s), its bindings moved in with one `let (mut a, b) = (a, b);`.
//! - Any other pattern (`_`, `(a, _)`, `Point { x, .. }`, `ref r`): the part it leaves unbound
//!   has no name, so the parameter is renamed to a hidden `__dlock_argN` and the body starts
//!   with `let __dlock_argN = __dlock_argN; let <pattern> = __dlock_argN;`, as rustc does. The
//!   keys (built before the body, by reference) see its bindings through
//!   `let <pattern without mut/ref/&> = &__dlock_argN;`, so there they are references; only a
//!   pattern the attribute reads gets this view (another would only repeat its errors).
//! - A receiver taken by value (`self`, `mut self`, `self: Arc<Self>`): `let _ = &self;` moves
//!   it into the block, which drops it after its locals, as the plain fn drops its first
//!   parameter last.
//!
//! A rebinding of a name the attribute itself uses (in a key, `ttl`, `wait` or `service`)
//! allows `unused_variables`: the body need not use it. Every other rebinding keeps the user's
//! spans, so an unused or needlessly `mut` parameter is reported where it was before.
//!
//! A parameter's `#[cfg]`/`#[cfg_attr]` stay on it and go on every statement made for it (they
//! may remove it); its lint attributes (`#[allow(unused_variables)]`, `#[expect(..)]`, …) move
//! to the rebinding, the binding the body uses, where they mean what they meant on the plain
//! fn. A rebinding of a `_`-prefixed name allows clippy's pedantic lints about reading one;
//! every rebinding allows clippy's `shadow_same`/`shadow_reuse` (it shadows the parameter by
//! construction), and a view allows `pattern_type_mismatch` (it matches a reference on purpose).

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote_spanned};
use syn::visit_mut::VisitMut;
use syn::{Attribute, FnArg, Ident, Pat, PatIdent, Signature, Token};

/// The statements that carry the arguments into the body.
pub(crate) struct Moves {
    /// Before the keys are built: by-reference views of renamed patterns' bindings.
    pub views: TokenStream,
    /// The first statements of the body's block.
    pub prologue: TokenStream,
}

/// Rewrites `sig`'s parameters as described in the module docs and returns the statements
/// that go with them. `used_by_attribute` tells whether a binding's name appears in the
/// attribute.
pub(crate) fn rewrite(sig: &mut Signature, used_by_attribute: &dyn Fn(&Ident) -> bool) -> Moves {
    let mixed = Span::mixed_site();
    let mut moves = Moves { views: TokenStream::new(), prologue: TokenStream::new() };
    let allow = |used: bool| {
        if used { quote_spanned!(mixed=> #[allow(unused_variables)]) } else { TokenStream::new() }
    };
    for (index, input) in sig.inputs.iter_mut().enumerate() {
        let typed = match input {
            FnArg::Receiver(receiver) => {
                if receiver.reference.is_none() {
                    let self_token = receiver.self_token;
                    moves.prologue.extend(quote_spanned!(mixed=> let _ = &#self_token;));
                }
                continue;
            }
            FnArg::Typed(typed) => typed,
        };
        let ParamAttrs { cfgs, lints } = ParamAttrs::take(&mut typed.attrs);
        let pat = &mut *typed.pat;
        if let Pat::Ident(PatIdent { by_ref: None, subpat: None, mutability, ident, .. }) = pat {
            let binding_mut = mutability.take();
            let shadow = allow_shadow();
            let allow = allow(used_by_attribute(ident));
            let underscore = allow_underscored(std::iter::once(&*ident));
            moves.prologue.extend(
                quote_spanned!(mixed=> #(#cfgs)* #(#lints)* #allow #underscore #shadow let #binding_mut #ident = #ident;),
            );
        } else if binds_whole(pat) {
            let mut bindings = Vec::new();
            collect_and_strip_mut(pat, &mut bindings);
            let allow = allow(bindings.iter().any(|(ident, _)| used_by_attribute(ident)));
            let underscore = allow_underscored(bindings.iter().map(|(ident, _)| ident));
            let shadow = allow_shadow();
            let names = bindings.iter().map(|(ident, _)| ident);
            let patterns =
                bindings.iter().map(|(ident, mutability)| quote_spanned!(mixed=> #mutability #ident));
            let attrs = quote_spanned!(mixed=> #(#cfgs)* #(#lints)* #allow #underscore #shadow);
            moves.prologue.extend(match bindings.len() {
                0 => TokenStream::new(),
                1 => quote_spanned!(mixed=> #attrs let #(#patterns)* = #(#names)*;),
                _ => quote_spanned!(mixed=> #attrs let (#(#patterns),*) = (#(#names),*);),
            });
        } else {
            let arg = Ident::new(&format!("__dlock_arg{index}"), mixed);
            let original = std::mem::replace(
                pat,
                Pat::Ident(PatIdent {
                    attrs: Vec::new(),
                    by_ref: None,
                    mutability: None,
                    ident: arg.clone(),
                    subpat: None,
                }),
            );
            let mut bindings = Vec::new();
            let mut view = original.clone();
            collect_and_strip_mut(&mut view, &mut bindings);
            ByReference.visit_pat_mut(&mut view);
            let used = bindings.iter().any(|(ident, _)| used_by_attribute(ident));
            // Only what the attribute reads needs a view; another would report a pattern of the
            // wrong type a second time, as a reference.
            if used {
                moves.views.extend(quote_spanned! {mixed=>
                    #(#cfgs)* #[allow(unused_variables, clippy::pattern_type_mismatch)] let #view = &#arg;
                });
            }
            let arg_mut = has_ref_mut(&original).then(|| Token![mut](mixed));
            let allow = allow(used);
            moves.prologue.extend(quote_spanned! {mixed=>
                #(#cfgs)* let #arg_mut #arg = #arg;
                #(#cfgs)* #(#lints)* #allow let #original = #arg;
            });
        }
    }
    moves
}

/// On a rebinding `let x = x;` / `let (a, b) = (a, b);`: the new binding shadows the parameter
/// by construction, which clippy's restriction lints `shadow_same` and `shadow_reuse` would
/// point out on the parameter's own span (the plain fn has no such statement). The body's own
/// shadowing is still linted: against the rebinding, which has the parameter's span.
fn allow_shadow() -> TokenStream {
    quote_spanned!(Span::mixed_site()=> #[allow(clippy::shadow_same, clippy::shadow_reuse)])
}

/// A parameter's attributes that the statements generated for it need too.
struct ParamAttrs {
    /// `#[cfg]` and `#[cfg_attr]`: kept on the parameter (which they may remove) and copied onto
    /// each statement that names it, which goes with it.
    cfgs: Vec<Attribute>,
    /// Lint attributes (`allow`, `expect`, `warn`, `deny`, `forbid`): moved to the rebinding,
    /// the binding the body uses, so that they apply where the plain fn applies them (left on
    /// the parameter, an `expect` would find its lint unfulfilled there).
    lints: Vec<Attribute>,
}

/// The attributes that set lint levels.
const LINT_ATTRIBUTES: [&str; 5] = ["allow", "expect", "warn", "deny", "forbid"];

impl ParamAttrs {
    fn take(attrs: &mut Vec<Attribute>) -> Self {
        let (lints, kept): (Vec<_>, Vec<_>) = std::mem::take(attrs).into_iter().partition(is_lint);
        *attrs = kept;
        let cfgs = attrs
            .iter()
            .filter(|attr| attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr"))
            .cloned()
            .collect();
        Self { cfgs, lints }
    }
}

/// A lint attribute, or a `cfg_attr` that only ever gives lint attributes.
fn is_lint(attr: &Attribute) -> bool {
    let is_lint_path = |path: &syn::Path| LINT_ATTRIBUTES.iter().any(|name| path.is_ident(name));
    if is_lint_path(attr.path()) {
        return true;
    }
    if !attr.path().is_ident("cfg_attr") {
        return false;
    }
    let parsed = attr.parse_args_with(syn::punctuated::Punctuated::<syn::Meta, Token![,]>::parse_terminated);
    parsed.is_ok_and(|metas| metas.len() > 1 && metas.iter().skip(1).all(|meta| is_lint_path(meta.path())))
}

/// `let _x = _x;` reads a binding whose name says it is not read, which clippy's pedantic
/// `used_underscore_binding` and `no_effect_underscore_binding` point out (the plain fn has no
/// such statement): allowed when one of `names` starts with `_`.
fn allow_underscored<'a>(mut names: impl Iterator<Item = &'a Ident>) -> TokenStream {
    if names.any(|name| name.to_string().starts_with('_')) {
        quote_spanned!(Span::mixed_site()=> #[allow(clippy::used_underscore_binding, clippy::no_effect_underscore_binding)])
    } else {
        TokenStream::new()
    }
}

/// Whether `pat` moves the whole value into its bindings, so that nothing of it is left to
/// drop after them: no `_`, no `..`, no `ref`, nothing we cannot see into.
fn binds_whole(pat: &Pat) -> bool {
    match pat {
        Pat::Ident(p) => p.by_ref.is_none() && p.subpat.as_ref().is_none_or(|(_, sub)| binds_whole(sub)),
        Pat::Tuple(p) => p.elems.iter().all(binds_whole),
        Pat::TupleStruct(p) => p.elems.iter().all(binds_whole),
        Pat::Struct(p) => p.rest.is_none() && p.fields.iter().all(|f| binds_whole(&f.pat)),
        Pat::Slice(p) => p.elems.iter().all(binds_whole),
        Pat::Reference(p) => binds_whole(&p.pat),
        Pat::Paren(p) => binds_whole(&p.pat),
        // `_`, `..`, `|`, paths, literals, ranges, macros and what syn keeps as tokens.
        _ => false,
    }
}

fn has_ref_mut(pat: &Pat) -> bool {
    struct Find(bool);
    impl VisitMut for Find {
        fn visit_pat_ident_mut(&mut self, p: &mut PatIdent) {
            self.0 |= p.by_ref.is_some() && p.mutability.is_some();
            syn::visit_mut::visit_pat_ident_mut(self, p);
        }
    }
    let mut find = Find(false);
    find.visit_pat_mut(&mut pat.clone());
    find.0
}

/// Removes the `mut` of every binding in `pat` (not of `ref mut`), collecting the bindings in
/// order with the `mut` each had.
fn collect_and_strip_mut(pat: &mut Pat, bindings: &mut Vec<(Ident, Option<Token![mut]>)>) {
    struct Strip<'a>(&'a mut Vec<(Ident, Option<Token![mut]>)>);
    impl VisitMut for Strip<'_> {
        fn visit_pat_ident_mut(&mut self, p: &mut PatIdent) {
            let mutability = if p.by_ref.is_none() { p.mutability.take() } else { None };
            self.0.push((p.ident.clone(), mutability));
            syn::visit_mut::visit_pat_ident_mut(self, p);
        }
        // Types inside patterns (none in parameters) and expressions are left alone.
        fn visit_expr_mut(&mut self, _: &mut syn::Expr) {}
    }
    Strip(bindings).visit_pat_mut(pat);
}

/// Turns a pattern into one that matches a reference to the value by the default binding
/// mode: no `ref`/`mut` on bindings, no `&` patterns (edition 2024 forbids both under a
/// by-reference default binding mode). Every binding becomes a reference.
struct ByReference;

impl VisitMut for ByReference {
    fn visit_pat_mut(&mut self, pat: &mut Pat) {
        if let Pat::Reference(reference) = pat {
            *pat = (*reference.pat).clone();
            return self.visit_pat_mut(pat);
        }
        if let Pat::Ident(p) = pat {
            p.by_ref = None;
            p.mutability = None;
        }
        syn::visit_mut::visit_pat_mut(self, pat);
    }

    fn visit_expr_mut(&mut self, _: &mut syn::Expr) {}
}

/// Every identifier in `tokens`, for [`rewrite`]'s `used_by_attribute`.
pub(crate) fn idents_in(tokens: impl ToTokens, into: &mut Vec<String>) {
    for tt in tokens.into_token_stream() {
        match tt {
            proc_macro2::TokenTree::Ident(ident) => into.push(ident.to_string()),
            proc_macro2::TokenTree::Group(group) => idents_in(group.stream(), into),
            _ => {}
        }
    }
}
