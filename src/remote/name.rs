//! Names are bytes, on the server and in the kernel; inside moor they are `String`s.
//! A name that is not UTF-8 (Latin-1 from an old tree) keeps its bytes: each byte of
//! an invalid sequence becomes a character of Unicode's last private-use plane,
//! U+10FF00 + byte, and turns back into that byte on the way out. A real U+10FFxx in a
//! name is written the same way (its four UTF-8 bytes, each escaped), so that every
//! name comes back exactly as it went in. `/` is never escaped: it is valid UTF-8.

const BASE: u32 = 0x10_FF00;

fn escaped(byte: u8) -> char {
    // BASE + 0..=255 are all valid scalar values in the last private-use plane.
    char::from_u32(BASE + u32::from(byte)).unwrap_or(char::REPLACEMENT_CHARACTER)
}

fn is_escape(c: char) -> bool {
    (BASE..=BASE + 0xFF).contains(&(c as u32))
}

/// The name as moor holds it.
pub fn from_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if is_escape(c) {
                let mut buf = [0u8; 4];
                out.extend(c.encode_utf8(&mut buf).bytes().map(escaped));
            } else {
                out.push(c);
            }
        }
        out.extend(chunk.invalid().iter().copied().map(escaped));
    }
    out
}

/// The bytes the name stands for.
pub fn to_bytes(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for c in name.chars() {
        if is_escape(c) {
            out.push((c as u32 - BASE) as u8);
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    out
}

/// How many bytes the name stands for on the server: what the 255-byte limit of a name
/// is about, not the length of its escaped form (an escaped byte takes four).
pub fn byte_len(name: &str) -> usize {
    name.chars().map(|c| if is_escape(c) { 1 } else { c.len_utf8() }).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_counts_as_the_bytes_it_stands_for() {
        let euc_jp: Vec<u8> = b"\xa4\xa2".iter().copied().cycle().take(100).collect();
        let n = from_bytes(&euc_jp);
        assert!(n.len() > 255, "escaped, it is longer than the server's name");
        assert_eq!(byte_len(&n), 100);
        assert_eq!(byte_len("caf\u{e9}"), 5);
        assert_eq!(byte_len(&from_bytes("\u{10ff41}".as_bytes())), 4);
    }

    #[test]
    fn every_name_round_trips() {
        let names: [&[u8]; 7] = [
            b"plain.txt",
            "caf\u{e9}".as_bytes(),
            b"caf\xe9 latin-1",
            b"\xff\xfe/\x80",
            b"\xf4\x8f\xbf\xbf",
            "\u{10ff41}real".as_bytes(),
            b"",
        ];
        for n in names {
            assert_eq!(to_bytes(&from_bytes(n)), n, "{n:?}");
        }
    }

    #[test]
    fn utf8_stays_as_it_is_and_slashes_are_never_escaped() {
        assert_eq!(from_bytes("dir/caf\u{e9}".as_bytes()), "dir/caf\u{e9}");
        let s = from_bytes(b"a\xe9/b");
        assert_eq!(s.matches('/').count(), 1);
        assert!(s.starts_with('a') && s.ends_with("/b"));
    }
}
