//! Reading `ZCCL_*` values: the process environment with non-UTF-8 values
//! caught, and values quoted for error messages.

/// `v` quoted for an error message, cut after 64 characters (a value may be
/// megabytes long).
pub(crate) fn shown(v: &str) -> String {
    const MAX: usize = 64;
    match v.char_indices().nth(MAX) {
        None => format!("{v:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &v[..cut], v.len()),
    }
}

/// Runs `read` with a lookup into the process environment. A variable that
/// `read` asks for and that is set to bytes that are not UTF-8 reads as
/// unset, and its name is returned with the result: the caller turns it into
/// an error (rather than silently using the default).
pub(crate) fn read_process_env<T>(
    read: impl FnOnce(&dyn Fn(&str) -> Option<String>) -> T,
) -> (T, Option<String>) {
    let not_utf8 = std::cell::RefCell::new(None::<String>);
    let get = |k: &str| match std::env::var(k) {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            not_utf8.borrow_mut().get_or_insert_with(|| k.to_string());
            None
        }
    };
    let out = read(&get);
    (out, not_utf8.into_inner())
}
