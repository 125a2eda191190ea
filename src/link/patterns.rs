//! OpenSSH's patterns, as `Host`, `known_hosts` and algorithm lists use them.

/// `*` matches any run of characters, `?` any one.
pub(super) fn wildcard_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and how much of the text it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        for (pattern, text, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*.*", "nodot", false),
            ("??", "ab", true),
            ("??", "abc", false),
            ("a**", "a", true),
            ("", "", true),
            ("", "a", false),
        ] {
            assert_eq!(wildcard_matches(pattern.as_bytes(), text.as_bytes()), want, "{pattern} ~ {text}");
        }
    }
}
