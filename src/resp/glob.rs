//! Redis's glob matcher (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a-z]`, `\x`. Used by KEYS,
//! SCAN/HSCAN MATCH and CONFIG GET.

/// Does `s` match `p`? Recursion depth is bounded by the number of `*` in the pattern, each
/// collapsed run of stars counting once; a pattern is at most one RESP argument.
pub fn matches(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    while pi < p.len() {
        match p[pi] {
            b'*' => {
                while pi + 1 < p.len() && p[pi + 1] == b'*' {
                    pi += 1;
                }
                if pi + 1 == p.len() {
                    return true;
                }
                return (si..=s.len()).any(|k| matches(&p[pi + 1..], &s[k..]));
            }
            b'?' => {
                if si >= s.len() {
                    return false;
                }
                si += 1;
            }
            b'[' => {
                if si >= s.len() {
                    return false;
                }
                pi += 1;
                let not = p.get(pi) == Some(&b'^');
                if not {
                    pi += 1;
                }
                let mut hit = false;
                while pi < p.len() && p[pi] != b']' {
                    if p[pi] == b'\\' && pi + 1 < p.len() {
                        pi += 1;
                        hit |= p[pi] == s[si];
                    } else if pi + 2 < p.len() && p[pi + 1] == b'-' && p[pi + 2] != b']' {
                        let (a, b) = (p[pi].min(p[pi + 2]), p[pi].max(p[pi + 2]));
                        hit |= (a..=b).contains(&s[si]);
                        pi += 2;
                    } else {
                        hit |= p[pi] == s[si];
                    }
                    pi += 1;
                }
                if hit == not {
                    return false;
                }
                si += 1;
            }
            b'\\' if pi + 1 < p.len() => {
                pi += 1;
                if si >= s.len() || p[pi] != s[si] {
                    return false;
                }
                si += 1;
            }
            c => {
                if si >= s.len() || c != s[si] {
                    return false;
                }
                si += 1;
            }
        }
        pi += 1;
    }
    si == s.len()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_cases() {
        assert!(matches(b"*", b""));
        assert!(matches(b"sess:*", b"sess:abc"));
        assert!(!matches(b"sess:*", b"ses"));
        assert!(matches(b"h?llo", b"hello"));
        assert!(matches(b"h[ae]llo", b"hallo"));
        assert!(!matches(b"h[^e]llo", b"hello"));
        assert!(matches(b"h[a-b]llo", b"hbllo"));
        assert!(matches(b"a\\*b", b"a*b"));
        assert!(!matches(b"a\\*b", b"axb"));
        assert!(matches(b"*a*b*", b"xxaxxbxx"));
        assert!(matches(b"replica-read-only", b"replica-read-only"));
    }
}
