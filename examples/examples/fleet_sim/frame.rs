//! Reading a frame the server sent. Kept apart so that `tests/fleet_sim.rs` can include it
//! and run its unit test: the simulator itself is an example binary, which `cargo test` builds
//! as a program (the integration test runs it), not as a test harness.

/// The `id:` of a `policy` frame. The server writes `event:` first and `id:` second, so only
/// those two lines are looked at (not the policy after them, which 10,000 agents would each
/// scan on the server's cores); a frame in another order is read whole.
pub fn policy_id(frame: &[u8]) -> Option<u64> {
    let is_policy = |line: &[u8]| matches!(line.trim_ascii(), b"event:policy" | b"event: policy");
    let id_of = |line: &[u8]| {
        let id = line.trim_ascii().strip_prefix(b"id:")?;
        std::str::from_utf8(id).ok()?.trim().parse().ok()
    };
    let frame = frame.trim_ascii_end();
    let mut head = frame.splitn(3, |&b| b == b'\n');
    if head.next().is_some_and(is_policy) {
        if let Some(id) = head.next().and_then(id_of) {
            return Some(id);
        }
    }
    let mut lines = frame.split(|&b| b == b'\n');
    if !lines.clone().any(is_policy) {
        return None;
    }
    lines.find_map(id_of)
}

#[cfg(test)]
mod tests {
    use super::policy_id;

    #[test]
    fn the_version_of_policy_frames_only_in_either_field_order() {
        assert_eq!(
            policy_id(b"event: policy\nid: 6\ndata: {\"v\":1}\n\n"),
            Some(6)
        );
        assert_eq!(
            policy_id(b"event:policy\ndata:{\"v\":1}\nid:7\n\n"),
            Some(7)
        );
        assert_eq!(policy_id(b"id: 8\nevent: policy\ndata:{}\n\n"), Some(8));
        assert_eq!(policy_id(b"event:block\ndata:{}\nid:9\n\n"), None);
        assert_eq!(policy_id(b"event:policy\ndata:{}\n\n"), None);
        assert_eq!(policy_id(b":\n\n"), None);
    }
}
