//! Registration, the membership watch and create-if-absent against a real
//! etcd (the one `scripts/setup.sh` installs) on loopback ports.

use std::time::{Duration, Instant};

use kvtier_cluster::{
    Claim, ClusterError, ClusterUrl, Etcd, Member, MemberState, Membership, MembershipWatch,
    Registration, RegistrationConfig,
};
use kvtier_testkit::{etcd, find_etcd, prereq, EtcdProcess};

const TTL: Duration = Duration::from_secs(2);
/// A lease expires within its TTL; etcd checks expiries every 500 ms and
/// the watch needs a moment: this much slack on top.
const SLACK: Duration = Duration::from_secs(3);

fn start_etcd() -> Option<EtcdProcess> {
    // The library's log lines in the test output (shown on failure).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("kvtier_cluster=info")
        .with_test_writer()
        .try_init();
    let Some(bin) = find_etcd() else {
        prereq::missing("an etcd binary", etcd::HOW_TO_GET);
        return None;
    };
    Some(tokio::task::block_in_place(|| EtcdProcess::start(&bin)).expect("etcd starts"))
}

async fn connect(etcd: &EtcdProcess) -> Etcd {
    let url = ClusterUrl::parse(&etcd.url()).expect("url");
    Etcd::connect(&url, Duration::from_secs(2))
        .await
        .expect("client")
}

fn member(id: &str) -> Member {
    Member {
        id: id.into(),
        grpc: format!("127.0.0.1:{}", 50_000 + id.len()),
        data: None,
        weight: 1.0,
        epoch: 0,
        state: MemberState::Active,
    }
}

fn config(id: &str) -> RegistrationConfig {
    RegistrationConfig::new(member(id), TTL)
}

async fn until(
    watch: &MembershipWatch,
    within: Duration,
    what: &str,
    ok: impl Fn(&Membership) -> bool,
) -> std::sync::Arc<Membership> {
    let (m, met) = watch.wait_for(within, ok).await;
    assert!(met, "{what}: not within {within:?}; membership {m:?}");
    m
}

/// The registration's status once it has registered `n` times (the record
/// may reach a watcher a moment before the task notes it).
async fn registrations(reg: &Registration, n: u64) -> kvtier_cluster::RegistrationStatus {
    let mut rx = reg.subscribe();
    let waited =
        tokio::time::timeout(SLACK, rx.wait_for(|s| s.registrations >= n && s.registered)).await;
    assert!(
        waited.is_ok(),
        "not registered {n} times: {:?}",
        reg.status()
    );
    let status = reg.status();
    assert_eq!(status.registrations, n, "{status:?}");
    status
}

fn epoch(m: &Membership, id: &str) -> u64 {
    m.members.get(id).map_or(0, |m| m.epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_refuse_a_duplicate_drain_and_deregister() {
    let Some(server) = start_etcd() else { return };
    let etcd = connect(&server).await;
    let watch = MembershipWatch::start(etcd.clone());
    let a = Registration::start(&etcd, config("a")).await.expect("a");
    let m = until(&watch, SLACK, "a registered", |m| {
        m.members.contains_key("a")
    })
    .await;
    assert_eq!(m.members["a"].epoch, a.status().epoch);
    assert_eq!(m.active().count(), 1);

    // Same id, another process: refused after waiting one TTL for the lease.
    let started = Instant::now();
    let mut dup = config("a");
    dup.holder_wait = Duration::from_millis(1500);
    let err = Registration::start(&etcd, dup)
        .await
        .expect_err("duplicate");
    assert!(matches!(err, ClusterError::DuplicateNode { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"a\" is already registered") && msg.contains("--node-id"),
        "{msg}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // The holder is untouched.
    assert_eq!(watch.current().members["a"].epoch, a.status().epoch);

    a.set_state(MemberState::Draining);
    let m = until(&watch, SLACK, "a draining", |m| {
        m.members
            .get("a")
            .is_some_and(|a| a.state == MemberState::Draining)
    })
    .await;
    assert_eq!(m.active().count(), 0);
    assert!(m.placement().is_empty());

    let started = Instant::now();
    a.deregister().await;
    until(&watch, SLACK, "a gone after deregister", |m| {
        m.members.is_empty()
    })
    .await;
    assert!(started.elapsed() < TTL, "revoked, not expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_registers_again_with_a_new_epoch() {
    let Some(server) = start_etcd() else { return };
    let etcd = connect(&server).await;
    let watch = MembershipWatch::start(etcd.clone());
    let reg = Registration::start(&etcd, config("n1")).await.expect("n1");
    let first = until(&watch, SLACK, "n1", |m| m.members.contains_key("n1")).await;
    let first_epoch = epoch(&first, "n1");
    // Someone (an operator, or etcd losing it) revokes the lease.
    let mut client = etcd.client();
    let key = etcd.url().node_key("n1");
    let got = client.get(key.as_str(), None).await.expect("get");
    let lease = got.kvs()[0].lease();
    client.lease_revoke(lease).await.expect("revoke");
    let m = until(&watch, TTL + SLACK, "n1 back with a new epoch", |m| {
        epoch(m, "n1") > first_epoch
    })
    .await;
    assert_eq!(m.members["n1"].grpc, first.members["n1"].grpc);
    let status = registrations(&reg, 2).await;
    assert!(status.registered);
    assert_eq!(status.epoch, epoch(&m, "n1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_registration_expires_with_its_lease() {
    let Some(server) = start_etcd() else { return };
    let etcd = connect(&server).await;
    let watch = MembershipWatch::start(etcd.clone());
    let reg = Registration::start(&etcd, config("gone"))
        .await
        .expect("reg");
    let keep = Registration::start(&etcd, config("kept"))
        .await
        .expect("reg");
    until(&watch, SLACK, "both", |m| m.members.len() == 2).await;
    let dropped = Instant::now();
    drop(reg); // like kill -9: no revoke, keep-alives stop
    until(&watch, TTL + SLACK, "expired", |m| m.ids() == ["kept"]).await;
    assert!(
        dropped.elapsed() >= Duration::from_secs(1),
        "it waited for the lease"
    );
    // The id is free again at once.
    let again = Registration::start(&etcd, config("gone"))
        .await
        .expect("again");
    until(&watch, SLACK, "back", |m| m.members.len() == 2).await;
    drop((again, keep));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarts_with_and_without_its_data() {
    let Some(mut server) = start_etcd() else {
        return;
    };
    let etcd = connect(&server).await;
    let watch = MembershipWatch::start(etcd.clone());
    let a = Registration::start(&etcd, config("a")).await.expect("a");
    let b = Registration::start(&etcd, config("b")).await.expect("b");
    let before = until(&watch, SLACK, "a and b", |m| m.members.len() == 2).await;
    assert_eq!(
        etcd.create_or_get("/kvtier/namespaces/x", b"cfg")
            .await
            .expect("claim"),
        Claim::Created
    );

    // Down: the last known membership stays.
    tokio::task::block_in_place(|| server.kill()).expect("kill");
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    assert_eq!(watch.current().members, before.members);
    assert!(etcd.check().await.is_err());

    // Back with its data: the leases held, nothing re-registered.
    tokio::task::block_in_place(|| server.restart(true)).expect("restart");
    etcd.check().await.expect("reachable");
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    let m = watch.current();
    assert_eq!(m.ids(), ["a", "b"]);
    assert_eq!(epoch(&m, "a"), epoch(&before, "a"));
    assert_eq!(a.status().registrations, 1);
    assert_eq!(
        etcd.create_or_get("/kvtier/namespaces/x", b"other")
            .await
            .expect("get"),
        Claim::Existing(b"cfg".to_vec())
    );

    // Back without its data: both register again with new epochs.
    tokio::task::block_in_place(|| server.restart(false)).expect("restart empty");
    let m = until(&watch, TTL * 2 + SLACK, "both re-registered", |m| {
        epoch(m, "a") > epoch(&before, "a") && epoch(m, "b") > epoch(&before, "b")
    })
    .await;
    assert_eq!(m.ids(), ["a", "b"]);
    registrations(&a, 2).await;
    registrations(&b, 2).await;
    assert_eq!(
        etcd.create_or_get("/kvtier/namespaces/x", b"new")
            .await
            .expect("claim"),
        Claim::Created,
        "the empty etcd forgot the namespace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_fails_registration_with_its_address() {
    let port = kvtier_testkit::free_port().expect("port");
    let url = ClusterUrl::parse(&format!("etcd://127.0.0.1:{port}")).expect("url");
    let etcd = Etcd::connect(&url, Duration::from_secs(1))
        .await
        .expect("lazy");
    let started = Instant::now();
    let err = Registration::start(&etcd, config("a"))
        .await
        .expect_err("nothing listens");
    let msg = err.to_string();
    assert!(matches!(err, ClusterError::Etcd { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The watch keeps an empty, unsynced view and does not fail.
    let watch = MembershipWatch::start(etcd);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!watch.current().synced);
}
