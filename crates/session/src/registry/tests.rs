//! Registry tests: counts, events, limits, listing pages.

use super::*;

fn entry(id: &str, instance: &str) -> SessionEntry {
    owned(id, instance, "")
}

fn owned(id: &str, instance: &str, owner: &str) -> SessionEntry {
    SessionEntry {
        session_id: id.into(),
        door: Default::default(),
        kind: Default::default(),
        instance_id: instance.into(),
        owner: owner.into(),
        container_id: "c".into(),
        command: vec!["sh".into()],
        tty: false,
        started_at_unix_ms: now_ms(),
        stats: Arc::new(SessionStats::new()),
        control: Arc::new(SessionControl::new(&CancellationToken::new())),
    }
}

fn kinds(rx: &mut broadcast::Receiver<InstanceEvent>) -> Vec<(InstanceEventKind, String, u32)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push((e.kind, e.instance_id, e.active_sessions));
    }
    out
}

#[test]
fn counts_and_events_follow_registrations() {
    use InstanceEventKind::*;
    let reg = Registry::new(Limits::default());
    let (snap, mut rx) = reg.watch(None);
    assert!(snap.is_empty());
    let a = reg.register(entry("a", "i1")).unwrap();
    let b = reg.register(entry("b", "i1")).unwrap();
    let c = reg.register(entry("c", "")).unwrap();
    assert_eq!(reg.active("i1"), 2);
    assert_eq!(reg.total(), 3);
    assert!(!reg.active_per_instance().contains_key(""));
    let (snap, _) = reg.watch(Some("i1"));
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].kind, Snapshot);
    drop(a);
    drop(b);
    drop(c);
    assert_eq!(reg.total(), 0);
    assert_eq!(
        kinds(&mut rx),
        vec![
            (Busy, "i1".into(), 1),
            (Count, "i1".into(), 2),
            (Count, "i1".into(), 1),
            (Idle, "i1".into(), 0)
        ]
    );
}

#[test]
fn duplicate_ids_and_limits_are_refused() {
    let reg = Registry::new(Limits {
        max_sessions: 3,
        max_sessions_per_instance: 2,
        max_sessions_per_owner: 0,
    });
    let _a = reg.register(entry("a", "i")).unwrap();
    assert_eq!(
        reg.register(entry("a", "j")).err(),
        Some(RegistryError::SessionIdInUse("a".into()))
    );
    let _b = reg.register(entry("b", "i")).unwrap();
    assert!(matches!(
        reg.register(entry("c", "i")).err(),
        Some(RegistryError::TooManyForInstance { limit: 2, .. })
    ));
    let _c = reg.register(entry("c", "")).unwrap();
    assert!(matches!(
        reg.register(entry("d", "k")).err(),
        Some(RegistryError::TooManySessions { limit: 3 })
    ));
    // Refusals left nothing behind.
    assert_eq!(reg.total(), 3);
}

#[test]
fn close_by_instance_ends_each_once() {
    let reg = Registry::new(Limits::default());
    let a = reg.register(entry("a", "i")).unwrap();
    let _b = reg.register(entry("b", "i")).unwrap();
    let _c = reg.register(entry("c", "other")).unwrap();
    assert_eq!(reg.close(&CloseTarget::Instance("i".into()), "bye"), 2);
    assert_eq!(reg.close(&CloseTarget::Instance("i".into()), "again"), 0);
    assert_eq!(reg.close(&CloseTarget::Session("nope".into()), "x"), 0);
    assert!(a.entry().control.token().is_cancelled());
    assert_eq!(a.entry().control.reason(), EndReason::Closed("bye".into()));
}

#[test]
fn counts_are_exact_under_concurrency() {
    let reg = Registry::new(Limits {
        max_sessions: 100_000,
        max_sessions_per_instance: 100_000,
        max_sessions_per_owner: 100_000,
    });
    let (_, mut rx) = reg.watch(None);
    std::thread::scope(|s| {
        for t in 0..8 {
            let reg = reg.clone();
            s.spawn(move || {
                for n in 0..200 {
                    let g = reg
                        .register(owned(
                            &format!("{t}-{n}"),
                            &format!("i{}", n % 3),
                            &format!("o{}", n % 2),
                        ))
                        .unwrap();
                    drop(g);
                }
            });
        }
    });
    assert_eq!(reg.total(), 0);
    assert!(reg.active_per_instance().is_empty());
    assert_eq!(reg.owner_active("o0") + reg.owner_active("o1"), 0);
    let mut level: HashMap<String, i64> = HashMap::new();
    for (kind, inst, n) in kinds(&mut rx) {
        let l = level.entry(inst).or_default();
        match kind {
            InstanceEventKind::Busy => {
                assert_eq!(*l, 0);
                *l = 1;
            }
            InstanceEventKind::Idle => {
                assert_eq!(*l, 1);
                *l = 0;
            }
            InstanceEventKind::Count => {
                assert!(*l >= 1 && (n as i64 - *l).abs() == 1);
                *l = n as i64;
            }
            InstanceEventKind::Snapshot => unreachable!(),
        }
        assert_eq!(*l, n as i64);
    }
    assert!(level.values().all(|l| *l == 0));
}

#[test]
fn owners_are_limited_independently_and_released_by_the_guard() {
    let reg = Registry::new(Limits {
        max_sessions: 100,
        max_sessions_per_instance: 100,
        max_sessions_per_owner: 2,
    });
    let a1 = reg.register(owned("a1", "i", "alice")).unwrap();
    let _a2 = reg.register(owned("a2", "", "alice")).unwrap();
    let err = reg.register(owned("a3", "j", "alice")).err().unwrap();
    assert_eq!(err, RegistryError::TooManyForOwner { limit: 2 });
    assert!(
        err.to_string().contains("limit of 2 sessions per client"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("alice"),
        "the owner key is not shown"
    );
    // Other owners, and sessions without an owner, are not affected.
    let _b1 = reg.register(owned("b1", "i", "bob")).unwrap();
    let _n: Vec<_> = (0..5)
        .map(|i| reg.register(owned(&format!("n{i}"), "", "")).unwrap())
        .collect();
    assert_eq!(reg.owner_active("alice"), 2);
    assert_eq!(reg.owner_active("bob"), 1);
    drop(a1);
    assert_eq!(reg.owner_active("alice"), 1);
    let _a3 = reg.register(owned("a3", "j", "alice")).unwrap();
    // 0 means unlimited.
    let reg = Registry::new(Limits {
        max_sessions_per_owner: 0,
        ..Limits::default()
    });
    let _all: Vec<_> = (0..300)
        .map(|i| reg.register(owned(&format!("s{i}"), "", "o")).unwrap())
        .collect();
}

#[test]
fn pages_follow_session_id_order_and_shorten_commands() {
    let reg = Registry::new(Limits::default());
    let mut guards = Vec::new();
    for id in ["d", "a", "c", "e", "b"] {
        let mut e = entry(id, if id < "c" { "x" } else { "y" });
        e.command = vec!["sh".into(), "-c".into(), "z".repeat(10_000)];
        guards.push(reg.register(e).unwrap());
    }
    let request = |after, limit| PageRequest {
        instance_id: None,
        owner: None,
        after,
        limit,
        max_command_bytes: 100,
    };
    let first = reg.page(&request(None, 2));
    let ids = |p: &ListPage| {
        p.sessions
            .iter()
            .map(|s| s.session_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ["a", "b"]);
    assert!(first.more);
    let second = reg.page(&request(Some("b"), 2));
    assert_eq!(ids(&second), ["c", "d"]);
    let third = reg.page(&request(Some("d"), 2));
    assert_eq!(ids(&third), ["e"]);
    assert!(!third.more);
    let shown = &first.sessions[0];
    assert!(shown.command_truncated);
    assert_eq!(shown.command.len(), 4);
    assert_eq!(shown.command[2].len(), 93);
    assert!(
        shown.command[3].contains("9907 of 10004 bytes not shown"),
        "{:?}",
        shown.command[3]
    );
    let only_y = reg.page(&PageRequest {
        instance_id: Some("y"),
        ..request(None, 10)
    });
    assert_eq!(ids(&only_y), ["c", "d", "e"]);
}

/// A caller limited to one owner's sessions lists, counts and closes
/// those only; someone else's session is as if unknown.
#[test]
fn an_owner_sees_and_closes_its_own_sessions_only() {
    let reg = Registry::new(Limits::default());
    let _g: Vec<Registration> = [("a1", "a"), ("b1", "b"), ("a2", "a"), ("x", "")]
        .into_iter()
        .map(|(id, owner)| reg.register(owned(id, "shared", owner)).unwrap())
        .collect();
    let page = reg.page(&PageRequest {
        instance_id: None,
        owner: Some("a"),
        after: None,
        limit: 10,
        max_command_bytes: 100,
    });
    let ids: Vec<&str> = page
        .sessions
        .iter()
        .map(|s| s.session_id.as_str())
        .collect();
    assert_eq!(ids, ["a1", "a2"]);
    assert_eq!(reg.active_per_instance_of("a").get("shared"), Some(&2));
    assert_eq!(reg.active_per_instance().get("shared"), Some(&4));
    let shared = CloseTarget::Instance("shared".into());
    assert_eq!(
        reg.close_of(&CloseTarget::Session("b1".into()), "no", Some("a")),
        0
    );
    assert_eq!(reg.close_of(&shared, "mine", Some("a")), 2);
    assert_eq!(
        reg.close_of(&shared, "rest", None),
        2,
        "b1 and x were left alone"
    );
}

#[test]
fn short_commands_are_listed_whole() {
    let argv: Vec<String> = vec!["echo".into(), "hi".into()];
    assert_eq!(shorten_command(&argv, 8), (argv.clone(), false));
    let (cut, truncated) = shorten_command(&argv, 7);
    assert!(truncated);
    assert_eq!(cut[..2], ["echo", "h"]);
    assert!(cut[2].contains("1 of 6 bytes not shown"), "{cut:?}");
    // Never inside a character.
    let (cut, _) = shorten_command(&["ééé".to_string()], 4);
    assert_eq!(cut[0], "é");
    // Empty arguments count too.
    let (cut, truncated) = shorten_command(&vec![String::new(); 4096], 100);
    assert!(truncated);
    assert_eq!(cut.len(), 101);
    assert!(cut[100].contains("3996 more arguments"), "{cut:?}");
}

#[tokio::test]
async fn drained_waits_for_the_last_registration() {
    let reg = Registry::new(Limits::default());
    // Nothing registered: drained at once.
    reg.drained().await;
    let a = reg.register(entry("a", "i")).unwrap();
    let b = reg.register(entry("b", "")).unwrap();
    let waiter = {
        let reg = reg.clone();
        tokio::spawn(async move { reg.drained().await })
    };
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "one session is still registered");
    drop(b);
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("drained after the last release")
        .unwrap();
    assert_eq!(reg.total(), 0);
}

#[test]
fn idle_time_is_monotonic_and_reset_by_activity() {
    let stats = SessionStats::new();
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert!(stats.idle_for() >= std::time::Duration::from_millis(30));
    stats.record_output(1);
    assert!(stats.idle_for() < std::time::Duration::from_millis(30));
}
