use super::*;
use crate::agent::CallEnd;

fn spec(parent: Option<AgentId>) -> AgentSpec {
    AgentSpec {
        parent,
        lease_ms: 1_000,
        ..AgentSpec::new("ns")
    }
}

#[test]
fn register_is_idempotent_and_refuses_conflicts() {
    let mut r = AgentRegistry::new(100);
    assert_eq!(r.register(1, spec(None), 0), Ok(Registered::New));
    assert_eq!(r.register(1, spec(None), 10), Ok(Registered::Existing));
    let mut other = spec(None);
    other.priority = 3;
    assert_eq!(r.register(1, other, 20), Err(LifecycleError::Conflict(1)));
    assert_eq!(r.len(), 1);
}

#[test]
fn bad_registrations_get_clear_errors() {
    let mut r = AgentRegistry::new(100);
    let mut zero = spec(None);
    zero.lease_ms = 0;
    assert_eq!(r.register(1, zero, 0), Err(LifecycleError::ZeroLease(1)));
    assert_eq!(
        r.register(2, spec(Some(9)), 0),
        Err(LifecycleError::UnknownParent {
            agent: 2,
            parent: 9
        })
    );
    assert_eq!(
        r.register(3, spec(Some(3)), 0),
        Err(LifecycleError::ParentCycle(3))
    );
    let mut bad = spec(None);
    bad.latency_sensitivity = f32::NAN;
    assert!(matches!(
        r.register(4, bad, 0),
        Err(LifecycleError::BadLatencySensitivity { agent: 4, .. })
    ));
    assert_eq!(r.call(7, 3, 0), Err(LifecycleError::UnknownAgent(7)));
    assert_eq!(r.end(7, 0), Err(LifecycleError::UnknownAgent(7)));
    assert!(r.is_empty());
    let msg = LifecycleError::ZeroLease(1).to_string();
    assert!(msg.contains("greater than 0"), "{msg}");
}

#[test]
fn end_cascades_to_sub_agents() {
    let mut r = AgentRegistry::new(100);
    r.register(1, spec(None), 0).unwrap();
    r.register(2, spec(Some(1)), 0).unwrap();
    r.register(3, spec(Some(2)), 0).unwrap();
    r.register(4, spec(None), 0).unwrap();
    let ended = r.end(1, 5).unwrap();
    assert_eq!(ended, vec![3, 2, 1]);
    assert_eq!(r.len(), 1);
    assert!(r.get(4).is_some());
    // A parent may end a child alone; the parent stays.
    r.register(5, spec(Some(4)), 6).unwrap();
    assert_eq!(r.end(5, 7).unwrap(), vec![5]);
    assert!(r.get(4).is_some());
}

#[test]
fn silent_agents_expire_and_child_calls_renew_parents() {
    let mut r = AgentRegistry::new(100);
    r.register(1, spec(None), 0).unwrap();
    r.register(2, spec(Some(1)), 0).unwrap();
    r.register(3, spec(None), 0).unwrap();
    assert!(r.expire(999).is_empty());
    // The child's call at 900 renews the parent too; agent 3 stays silent.
    r.call(2, 10, 900).unwrap();
    assert_eq!(r.expire(1_000), vec![3]);
    assert_eq!(r.expire(1_899), Vec::<AgentId>::new());
    let mut ended = r.expire(1_900);
    ended.sort_unstable();
    assert_eq!(ended, vec![1, 2]);
    assert!(r.is_empty());
}

#[test]
fn pins_are_bounded_per_namespace() {
    let mut r = AgentRegistry::new(100);
    r.set_pin_quota("big", 1_000);
    r.register(1, spec(None), 0).unwrap();
    r.register(2, spec(None), 0).unwrap();
    let mut big = spec(None);
    big.namespace = "big".into();
    r.register(3, big, 0).unwrap();
    let pin = Answer {
        ended: CallEnd::ToolCall,
        pin: true,
        ..Answer::default()
    };
    r.call(1, 60, 1).unwrap();
    r.answered(1, &pin, 2).unwrap();
    assert_eq!(r.pinned("ns"), 60);
    r.call(2, 50, 3).unwrap();
    let err = r.answered(2, &pin, 4).unwrap_err();
    assert_eq!(
        err,
        LifecycleError::PinQuotaExceeded {
            agent: 2,
            namespace: "ns".into(),
            requested: 50,
            pinned: 60,
            quota: 100
        }
    );
    // Another namespace has its own quota.
    r.call(3, 500, 5).unwrap();
    r.answered(3, &pin, 6).unwrap();
    assert_eq!(r.pinned("big"), 500);
    // Re-pinning a grown context replaces the agent's own pin.
    r.call(1, 90, 7).unwrap();
    r.answered(1, &pin, 8).unwrap();
    assert_eq!(r.pinned("ns"), 90);
    // Unpinning and ending release the quota.
    r.answered(1, &Answer::default(), 9).unwrap();
    assert_eq!(r.pinned("ns"), 0);
    r.answered(2, &pin, 10).unwrap();
    r.end(2, 11).unwrap();
    assert_eq!(r.pinned("ns"), 0);
}

#[test]
fn next_expiry_is_the_earliest_live_lease() {
    let mut r = AgentRegistry::new(100);
    assert_eq!(r.next_expiry(), None);
    r.register(1, spec(None), 0).expect("register");
    r.register(2, spec(None), 500).expect("register");
    assert_eq!(r.next_expiry(), Some(1_000));
    r.call(1, 4, 800).expect("call renews");
    assert_eq!(r.next_expiry(), Some(1_500));
    assert_eq!(r.expire(1_500), vec![2]);
    assert_eq!(r.next_expiry(), Some(1_800));
    assert_eq!(r.expire(1_800), vec![1]);
    assert_eq!(r.next_expiry(), None);
}
