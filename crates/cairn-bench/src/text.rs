//! The peer's deterministic texts: `f"{kind}#{i:06d}|"` followed by characters drawn from a
//! splitmix64 stream over a 64-character alphabet, 200 characters in all. Byte-identical to
//! `text200` in `langgraph_peer.py`.

/// Length of every generated text.
pub const TEXT_LEN: usize = 200;

/// `string.ascii_lowercase + string.ascii_uppercase + string.digits + " ."`.
pub const ALPHABET: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .";

/// The two kinds of text, with the peer's `KIND_CODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `user` (code 1).
    User,
    /// `assistant` (code 2).
    Assistant,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Assistant => "assistant",
        }
    }

    fn code(self) -> u64 {
        match self {
            Kind::User => 1,
            Kind::Assistant => 2,
        }
    }
}

/// One splitmix64 step: the new state and the output.
fn splitmix64(state: u64) -> (u64, u64) {
    let state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (state, z ^ (z >> 31))
}

/// The peer's `text200(kind, i)`.
pub fn text200(kind: Kind, i: u64) -> String {
    let mut s = format!("{}#{:06}|", kind.name(), i);
    let mut state = (kind.code() << 32) | i;
    while s.len() < TEXT_LEN {
        let (next, out) = splitmix64(state);
        state = next;
        s.push(ALPHABET[(out & 63) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed with the peer's Python `text200`.
    #[test]
    fn matches_the_python_generator() {
        let cases = [
            (Kind::User, 0, "user#000000|49v1VG0gryxKWwrfblCo21E0P9AYrkiJNz7c yZyruHgVapylxWhPrw6iizYi4rdTpHbDhIXUUk11stlKCpCQOKAXItpyW9bnZr8hHRHHzmn0Y.CEJMdgRSfvfQWUHrDdeTzFzUHgEKpyBaAbzcBxlSMU6yj8 cGXZpSdpSPoGrVd yJiMpNkmOVjDFC"),
            (Kind::Assistant, 1, "assistant#000001|j596bXAR9ETG6Oc5ka2WWJYlfHL7YJRPFi33ZeuCNd74L8C6Hto7TrDLjHyx6r8TxpcYHoNfFPMD1M1HuIas3xHmhystw7Htp0SAcStObUWpajJJl2seTd4yyfL2Yn06h9D8tOCJc.btX5uBf8fPY.kT1SR4hMb97IBtSbXwxrNgwCm5pgKFWMJ"),
            (Kind::User, 42, "user#000042|Jv4GqvePHEU54Fh38c1KkL3FeA5UZqi4PQ6N.R9BnNDownSEItjOBATebBBfuRJe3OybVfRGpiyu9VtD2KFQomCX tRce8YM3mFWmhn6RI.IMcR0AINQxmdPGPC4qm.p9E9N7SVDhVyD7hqmsrc5.UvEPW0iS36A hD2re5ETL4ZqRm u MBcYxYKw56"),
            (Kind::Assistant, 399, "assistant#000399|zbQG1LD.sgw.Y6HENO7NC GMkm5107JGy6AhlNhshn3WBXyo53OYLJhKfcEULmSv6T0EvsQqdSTrCEveSaxmnnuFxaknSH759nRqnEoNiYSCL5WCcjZIqop9zUMx8FP94aAJtBUdR96y.bwootRCtGJ0K8PWJ0Bdao1oNkaOzUhj7EVKna Pak "),
            (Kind::User, 2999, "user#002999|qDvGELDF8rKu.EyQrkkxWwU115d 3DuphnQvuwL3iEkazHRtqaPHVI53DkDQr37tVfWr78r0BtML4XH61mVbWDCLhHHq G.n4JgB9cTsCgFzgtcvNysHxiXOvmY4sq5XkVD7mNO5tJB85sWBT17X3GoLMDIh397StbdFM2rAwTBD YBQHDLSrBDaDMRz"),
        ];
        for (kind, i, want) in cases {
            assert_eq!(text200(kind, i), want, "{kind:?} {i}");
        }
    }

    #[test]
    fn every_text_is_200_ascii_chars_and_distinct() {
        let a = text200(Kind::User, 7);
        let b = text200(Kind::Assistant, 7);
        assert_eq!(a.len(), TEXT_LEN);
        assert!(a.is_ascii());
        assert_ne!(a, b);
        assert_ne!(a, text200(Kind::User, 8));
    }
}
