//! Unit tests of the ban table, with the maps as a plain table.

use super::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The maps as a plain table, with an optional failure.
#[derive(Default)]
struct FakeMaps {
    entries: BTreeMap<Cidr, BanValue>,
    count: u32,
    fail_remove: bool,
}

impl BanMaps for FakeMaps {
    fn insert(&mut self, cidr: &Cidr, value: &BanValue) -> Result<()> {
        self.entries.insert(*cidr, *value);
        Ok(())
    }
    fn remove(&mut self, cidr: &Cidr) -> Result<()> {
        if self.fail_remove {
            return Err(anyhow!("EPERM"));
        }
        self.entries.remove(cidr);
        Ok(())
    }
    fn set_count(&mut self, count: u32) -> Result<()> {
        self.count = count;
        Ok(())
    }
}

fn c(s: &str) -> Cidr {
    s.parse().expect(s)
}

const S: u64 = 1_000_000_000;

fn table() -> BanTable<FakeMaps> {
    let allow = vec![c("127.0.0.0/8"), c("::1"), c("10.200.0.1"), c("fd00::/16")];
    BanTable::new(FakeMaps::default(), allow).expect("table")
}

/// The changes a sink was told: what, and to which prefix.
type Told = Arc<Mutex<Vec<(BanChange, String)>>>;

/// A table whose sink records every change it is told.
fn told_table() -> (BanTable<FakeMaps>, Told) {
    let told = Arc::new(Mutex::new(Vec::new()));
    let mut t = table();
    let log = told.clone();
    t.set_sink(Box::new(move |change, ban| {
        log.lock()
            .expect("lock")
            .push((change, ban.cidr.to_string()))
    }));
    (t, told)
}

#[test]
fn the_table_tells_each_change_when_it_makes_it() {
    let (mut t, told) = told_table();
    let ttl = Duration::from_secs(2);
    // Added and removed at the same instant: both are told, in order.
    t.add(c("192.0.2.1"), Duration::from_secs(600), "x", 100 * S)
        .expect("add");
    assert_eq!(told.lock().expect("lock").len(), 1, "told at the add");
    t.remove(&c("192.0.2.1"), 100 * S).expect("remove");
    t.add(c("192.0.2.2"), ttl, "", 100 * S).expect("add");
    // Refused adds tell nothing.
    assert!(t.add(c("10.200.0.1"), ttl, "", 100 * S).is_err());
    // Not yet over: nothing expires; then the sweep expires it.
    assert_eq!(t.sweep(101 * S).expect("sweep"), 0);
    assert_eq!(t.sweep(102 * S).expect("sweep"), 1);
    let got = told.lock().expect("lock").clone();
    assert_eq!(
        got,
        [
            (BanChange::Added, "192.0.2.1/32".to_owned()),
            (BanChange::Removed, "192.0.2.1/32".to_owned()),
            (BanChange::Added, "192.0.2.2/32".to_owned()),
            (BanChange::Expired, "192.0.2.2/32".to_owned()),
        ]
    );
}

#[test]
fn many_bans_at_once_with_refusals_by_index() {
    let mut t = table();
    let ttl = Duration::from_secs(60);
    let bans = vec![
        (c("192.0.2.1"), ttl, String::new()),
        (c("10.200.0.1"), ttl, String::new()), // allowlisted
        (c("2001:db8::/48"), ttl, "feed".to_owned()),
        (c("192.0.2.2"), Duration::ZERO, String::new()), // bad TTL
    ];
    let (added, refused) = t.add_many(bans, 100 * S);
    assert_eq!(added, 2);
    let idx: Vec<usize> = refused.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, [1, 3]);
    assert!(matches!(refused[0].1, BanError::Allowlisted { .. }));
    assert!(matches!(refused[1].1, BanError::Invalid(_)));
    assert_eq!(t.maps.count, 2);
    assert_eq!(t.family_counts(), (1, 1));
    assert_eq!(t.list(100 * S)[0].added_by, "manual");
}

#[test]
fn family_counts_follow_adds_replaces_removes_and_expiry() {
    let mut t = table();
    let ttl = Duration::from_secs(5);
    for i in 0..300u32 {
        let v4 = format!("198.51.{}.{}", i / 250, i % 250);
        t.add(c(&v4), ttl, "", 100 * S).expect("add v4");
    }
    t.add(c("2001:db8::1"), ttl, "", 100 * S).expect("add v6");
    t.add(c("198.51.0.7"), ttl, "replace", 100 * S)
        .expect("replace");
    assert_eq!(t.family_counts(), (300, 1));
    t.remove(&c("198.51.0.7"), 101 * S).expect("remove");
    assert_eq!(t.family_counts(), (299, 1));
    t.add(c("2001:db8::2"), Duration::from_secs(60), "", 101 * S)
        .expect("add v6");
    assert_eq!(t.sweep(110 * S).expect("sweep"), 300);
    assert_eq!(t.family_counts(), (0, 1));
}

#[test]
fn add_list_remove_keeps_the_count() {
    let mut t = table();
    let r = t
        .add(c("10.200.0.2"), Duration::from_secs(3), "test", 100 * S)
        .expect("add");
    assert_eq!(r.cidr, c("10.200.0.2"));
    assert_eq!(r.expires_in_ms, 3000);
    assert_eq!(r.added_by, "manual");
    t.add(c("2001:db8::/32"), Duration::from_secs(60), "", 100 * S)
        .expect("add v6");
    assert_eq!(t.maps.count, 2);
    assert_eq!(t.maps.entries[&c("10.200.0.2")].expires_ns, 103 * S);
    assert_eq!(t.maps.entries[&c("10.200.0.2")].reason, BAN_REASON_MANUAL);
    // Replacing keeps one entry.
    t.add(c("10.200.0.2"), Duration::from_secs(10), "again", 101 * S)
        .expect("replace");
    assert_eq!(t.maps.count, 2);
    let l = t.list(102 * S);
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].reason, "again");
    assert_eq!(l[0].expires_in_ms, 9000);
    let gone = t.remove(&c("2001:db8::/32"), 102 * S).expect("remove");
    assert_eq!(gone.cidr, c("2001:db8::/32"));
    assert_eq!(t.maps.count, 1);
    assert_eq!(t.maps.entries.len(), 1);
    assert!(matches!(
        t.remove(&c("2001:db8::/32"), 102 * S),
        Err(BanError::NotFound(_))
    ));
}

#[test]
fn allowlist_wins() {
    let mut t = table();
    for bad in [
        "127.0.0.1",
        "127.0.0.0/24",
        "10.0.0.0/8",
        "10.200.0.1",
        "::1",
        "fd00:200::2",
        "fc00::/7",
    ] {
        let e = t
            .add(c(bad), Duration::from_secs(3), "x", S)
            .expect_err(bad);
        assert!(matches!(e, BanError::Allowlisted { .. }), "{bad}: {e}");
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(e.to_string().contains("allowlisted"), "{e}");
    }
    assert!(t.is_empty());
    assert_eq!(t.maps.count, 0);
    assert!(t.maps.entries.is_empty());
    // Next to the allowlist is fine.
    t.add(c("10.200.0.2"), Duration::from_secs(3), "x", S)
        .expect("neighbour");
}

#[test]
fn bad_requests() {
    let mut t = table();
    for (cidr, ttl, reason) in [
        ("8.0.0.0/0", Duration::from_secs(1), ""),
        ("8.8.8.8", Duration::ZERO, ""),
        ("8.8.8.8", Duration::from_secs(24 * 3600 + 1), ""),
        ("8.8.8.8", Duration::from_secs(1), "line\nbreak"),
    ] {
        let e = t.add(c(cidr), ttl, reason, S).expect_err(cidr);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
    }
    assert_eq!(t.maps.count, 0);
}

#[test]
fn sweep_removes_only_expired() {
    let mut t = table();
    t.add(c("8.8.8.8"), Duration::from_secs(3), "", 10 * S)
        .expect("add");
    t.add(c("9.9.9.0/24"), Duration::from_secs(5), "", 10 * S)
        .expect("add");
    assert_eq!(t.sweep(12 * S).expect("sweep"), 0);
    assert_eq!(t.maps.count, 2);
    // Expired but not yet swept: not listed, still counted.
    assert_eq!(t.list(13 * S).len(), 1);
    assert_eq!(t.sweep(13 * S).expect("sweep"), 1);
    assert_eq!(t.maps.count, 1);
    assert_eq!(t.len(), 1);
    t.maps.fail_remove = true;
    assert!(t.sweep(20 * S).is_err());
    assert_eq!(t.maps.count, 1);
    t.maps.fail_remove = false;
    assert_eq!(t.sweep(20 * S).expect("sweep"), 1);
    assert_eq!(t.maps.count, 0);
    assert!(t.maps.entries.is_empty());
}

#[test]
fn restore_keeps_active_bans_with_their_saved_reasons() {
    use super::SavedBan;
    let kernel = vec![
        (c("10.200.0.2"), BanValue::new(20 * S, BAN_REASON_MANUAL)),
        (c("10.9.0.0/16"), BanValue::new(30 * S, BAN_REASON_MANUAL)),
        (c("10.8.0.1"), BanValue::new(5 * S, BAN_REASON_MANUAL)),
        (c("10.200.0.1"), BanValue::new(50 * S, BAN_REASON_MANUAL)),
    ];
    let saved = vec![
        SavedBan {
            cidr: "10.200.0.2/32".into(),
            reason: "flood".into(),
            code: 1,
            expires_ns: 20 * S,
        },
        SavedBan {
            cidr: "10.7.0.1/32".into(),
            reason: "lost map".into(),
            code: 1,
            expires_ns: 40 * S,
        },
    ];
    let allow = vec![c("127.0.0.0/8"), c("10.200.0.1")];
    let mut maps = FakeMaps::default();
    for (cidr, v) in &kernel {
        maps.entries.insert(*cidr, *v);
    }
    let t = BanTable::restore(maps, allow.clone(), kernel.clone(), &saved, false, 10 * S)
        .expect("restore");
    let l = t.list(10 * S);
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[0].cidr, c("10.9.0.0/16"));
    assert_eq!(l[0].reason, RESTORED_REASON);
    assert_eq!(l[1].cidr, c("10.200.0.2"));
    assert_eq!(l[1].reason, "flood");
    assert_eq!(t.maps.count, 2);
    // The expired and the allowlisted entries left the maps.
    assert_eq!(t.maps.entries.len(), 2);
    // With re-adding (the maps were recreated), the state file's other
    // ban comes back into the maps.
    let t = BanTable::restore(FakeMaps::default(), allow, Vec::new(), &saved, true, 10 * S)
        .expect("restore");
    assert_eq!(t.list(10 * S).len(), 2);
    assert_eq!(t.maps.entries.len(), 2);
    assert_eq!(t.maps.count, 2);
    assert_eq!(t.saved().len(), 2);
}

#[test]
fn default_allowlist_has_loopback_and_extras() {
    let a = allowlist(&[c("192.0.2.0/24")]).expect("allowlist");
    assert!(a.contains(&c("127.0.0.0/8")));
    assert!(a.contains(&c("::1")));
    assert!(a.contains(&c("192.0.2.0/24")));
    // lo's 127.0.0.1 is inside 127.0.0.0/8, so not listed again.
    assert!(!a.contains(&c("127.0.0.1")));
    let b = allowlist(&[c("127.0.0.0/7"), c("192.0.2.1")]).expect("allowlist");
    assert!(b.contains(&c("127.0.0.0/7")));
    assert!(!b.contains(&c("127.0.0.0/8")));
    assert!(b.contains(&c("192.0.2.1")));
}
