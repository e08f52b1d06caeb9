//! Runnable examples for dlock live beside this file; see the README.
