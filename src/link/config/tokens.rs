//! OpenSSH's `%` tokens and `~` in file names and commands, and quoting for the shell.

use super::*;

/// Expands `~` and the `%` tokens OpenSSH allows in file names.
/// `raw` with each `%x` replaced by `value(x)` and `%%` by `%`; a token `value` does not
/// know is left as it is.
pub(super) fn tokens(raw: &str, value: impl Fn(char) -> Option<String>) -> String {
    let mut s = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            s.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => s.push('%'),
            Some(t) => match value(t) {
                Some(v) => s.push_str(&v),
                None => {
                    s.push('%');
                    s.push(t);
                }
            },
            None => s.push('%'),
        }
    }
    s
}

/// The tokens every destination has: `%h` host name, `%n` host as given, `%p` port,
/// `%r` remote user.
pub(super) fn destination_token(d: &Destination, t: char) -> Option<String> {
    match t {
        'h' => Some(d.host_name.clone()),
        'n' => Some(d.alias.clone()),
        'p' => Some(d.port.to_string()),
        'r' => Some(d.user.clone()),
        _ => None,
    }
}

pub(super) fn expand(raw: &str, home: &Path, d: &Destination) -> PathBuf {
    let s = tokens(raw, |t| match t {
        'u' => Some(local_user()),
        'd' => Some(home.to_string_lossy().into_owned()),
        t => destination_token(d, t),
    });
    if let Some(rest) = s.strip_prefix("~/") {
        home.join(rest)
    } else if s == "~" {
        home.to_path_buf()
    } else {
        PathBuf::from(s)
    }
}
