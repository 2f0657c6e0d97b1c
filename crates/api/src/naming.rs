//! SwarmKit-style identifiers: object IDs and the base36 rendering that join tokens also use.
//! Task naming (`<service>.<slot>.<task id>`) lives here too, so the CLI and the executors agree.

const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Renders big-endian `bytes` as a base36 number, zero-padded on the left to `width` characters.
pub fn base36(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut out = Vec::new();
    while num.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 36) as u8;
            rem = acc % 36;
        }
        out.push(DIGITS[rem as usize]);
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// A new object ID: 17 random bytes with the top bit forced (so the base36 rendering always has 27
/// digits), then characters 1..26 of it: 25 lowercase characters (SwarmKit's identity.NewID).
pub fn new_id() -> String {
    let mut bytes = [0u8; 17];
    rand::fill(&mut bytes);
    bytes[0] |= 0x80;
    let s = base36(&bytes, 0);
    s[1..26].to_string()
}

/// The name of a task as users see it: `<service>.<slot>.<task id>`, or `<service>.<node id>.<task id>`
/// for tasks of global services (slot 0).
pub fn task_name(service_name: &str, slot: u64, node_id: &str, task_id: &str) -> String {
    if slot == 0 && !node_id.is_empty() {
        format!("{service_name}.{node_id}.{task_id}")
    } else {
        format!("{service_name}.{slot}.{task_id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_matches_known_value() {
        assert_eq!(
            base36(&u128::MAX.to_be_bytes(), 25),
            "f5lxx1zz5pnorynqglhzmsp33"
        );
        assert_eq!(base36(&[0], 3), "000");
        assert_eq!(base36(&[35], 1), "z");
    }

    #[test]
    fn ids_are_25_lowercase_base36_chars() {
        for _ in 0..200 {
            let id = new_id();
            assert_eq!(id.len(), 25, "{id}");
            assert!(id.bytes().all(|b| DIGITS.contains(&b)), "{id}");
        }
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn task_names() {
        assert_eq!(task_name("web", 2, "n1", "t1"), "web.2.t1");
        assert_eq!(task_name("glob", 0, "n1", "t1"), "glob.n1.t1");
    }
}
