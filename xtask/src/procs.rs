//! The process tree from `/proc/*/stat`: what `cargo xtask bench` and
//! `cargo xtask fresh-check` use to find the processes they started.

/// `pid` first, then every process below it, each with its state letter
/// (`S`, `R`, `Z`, ...), from the parent pids in `/proc/*/stat`.
pub fn tree(pid: u32) -> Vec<(u32, char)> {
    let mut procs: Vec<(u32, char, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            if let Some((state, ppid)) = state_and_ppid(&stat) {
                procs.push((p, state, ppid));
            }
        }
    }
    let own_state = procs
        .iter()
        .find(|(p, _, _)| *p == pid)
        .map_or('?', |(_, s, _)| *s);
    let mut out = vec![(pid, own_state)];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i].0;
        out.extend(
            procs
                .iter()
                .filter(|(_, _, pp)| *pp == cur)
                .map(|(p, s, _)| (*p, *s)),
        );
        i += 1;
    }
    out
}

/// The state letter and parent pid of a `/proc/PID/stat` line (the fields
/// after the parenthesised command name, which may contain spaces).
pub fn state_and_ppid(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_command_name_with_spaces() {
        let stat = "4242 (tokio rt) S 17 4242 4242 0 -1 4194560 144";
        assert_eq!(state_and_ppid(stat), Some(('S', 17)));
        assert_eq!(state_and_ppid("1 (a) Z"), None);
        assert_eq!(state_and_ppid("no parenthesis"), None);
    }
}
