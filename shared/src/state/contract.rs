//! The state-store contract, run against every backend: memory always,
//! Redis when `AIPROXY_TEST_REDIS_URL` is set (and then it must answer).
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;

const A: i64 = 1;
const B: i64 = 2;
const C: i64 = 3;

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn lease() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("lease-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn cand(id: i64, priority: i32, max: u32) -> Candidate {
    Candidate {
        id,
        priority,
        max_concurrency: max,
        weight: 1,
    }
}

/// A first call for key 10 / user 20 with no limits.
fn req<'a>(now: i64, lease: &'a str, candidates: &'a [Candidate]) -> ScheduleRequest<'a> {
    ScheduleRequest {
        now_ms: now,
        lease,
        lease_ttl_ms: 60_000,
        key_id: 10,
        key_rpm: 0,
        key_concurrency: 0,
        user_id: 20,
        user_concurrency: 0,
        session: None,
        session_ttl_ms: 60_000,
        candidates,
        exclude: &[],
        queue: None,
        queue_ttl_ms: 1_000,
        retry: None,
        random: 0.0,
    }
}

fn picked(o: &Outcome) -> i64 {
    match o {
        Outcome::Picked { account_id, .. } => *account_id,
        other => panic!("expected a pick, got {other:?}"),
    }
}

async fn take(store: &dyn StateStore, r: &ScheduleRequest<'_>) -> (i64, Held) {
    let o = store.schedule(r).await.unwrap();
    let id = picked(&o);
    (
        id,
        Held {
            lease: r.lease.to_string(),
            account_id: id,
            user_id: r.user_id,
            key_id: r.key_id,
        },
    )
}

async fn give_back(store: &dyn StateStore, now: i64, held: &Held) {
    store
        .release(&Release {
            now_ms: now,
            held: Some(held),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn spreads_evenly_and_prefers_priority(store: &dyn StateStore) {
    let now = wall_ms();
    let cands = [cand(A, 1, 0), cand(B, 1, 0), cand(C, 1, 0), cand(4, 2, 0)];
    let mut counts = std::collections::HashMap::new();
    for _ in 0..30 {
        let l = lease();
        let (id, held) = take(store, &req(now, &l, &cands)).await;
        *counts.entry(id).or_insert(0) += 1;
        give_back(store, now, &held).await;
    }
    assert_eq!(counts.get(&A), Some(&10), "{counts:?}");
    assert_eq!(counts.get(&B), Some(&10), "{counts:?}");
    assert_eq!(counts.get(&C), Some(&10), "{counts:?}");
    assert_eq!(
        counts.get(&4),
        None,
        "lower priority unused while higher has room"
    );
}

async fn concurrency_limits_and_lease_expiry(store: &dyn StateStore) {
    let now = wall_ms();
    let cands = [cand(A, 1, 1), cand(B, 2, 1)];
    let (l1, l2, l3) = (lease(), lease(), lease());
    let (a, held_a) = take(store, &req(now, &l1, &cands)).await;
    let (b, _held_b) = take(store, &req(now, &l2, &cands)).await;
    assert_eq!(
        (a, b),
        (A, B),
        "full accounts overflow to the next priority"
    );
    assert_eq!(
        store.schedule(&req(now, &l3, &cands)).await.unwrap(),
        Outcome::Full
    );
    let in_use = store.in_use(now).await.unwrap();
    assert!(in_use.contains(&InUse {
        scope: Scope::Account,
        id: A,
        count: 1
    }));
    assert!(in_use.contains(&InUse {
        scope: Scope::User,
        id: 20,
        count: 2
    }));
    give_back(store, now, &held_a).await;
    assert_eq!(
        picked(&store.schedule(&req(now, &l3, &cands)).await.unwrap()),
        A
    );
    // A node that dies never releases: its leases lapse after their TTL,
    // unless renewed by a live node.
    let later = now + 60_001;
    let l4 = lease();
    store
        .renew(
            &[Held {
                lease: l3.clone(),
                account_id: A,
                user_id: 20,
                key_id: 10,
            }],
            now + 30_000,
            60_000,
        )
        .await
        .unwrap();
    assert_eq!(
        picked(&store.schedule(&req(later, &l4, &cands)).await.unwrap()),
        B,
        "B's lease lapsed; A's was renewed"
    );
}

async fn key_and_user_limits(store: &dyn StateStore) {
    let now = wall_ms();
    let cands = [cand(A, 1, 0)];
    let (l1, l2, l3) = (lease(), lease(), lease());
    let mut r = req(now, &l1, &cands);
    r.key_id = 11;
    r.key_rpm = 2;
    take(store, &r).await;
    let mut r2 = r.clone();
    r2.lease = &l2;
    r2.now_ms = now + 10_000;
    take(store, &r2).await;
    let mut r3 = r.clone();
    r3.lease = &l3;
    r3.now_ms = now + 20_000;
    assert_eq!(
        store.schedule(&r3).await.unwrap(),
        Outcome::KeyRateLimited {
            retry_after_ms: 40_000
        }
    );
    r3.now_ms = now + 60_001;
    take(store, &r3).await;

    let (l4, l5) = (lease(), lease());
    let mut r = req(now, &l4, &cands);
    r.key_id = 12;
    r.user_id = 22;
    r.key_concurrency = 1;
    take(store, &r).await;
    let mut again = r.clone();
    again.lease = &l5;
    assert_eq!(store.schedule(&again).await.unwrap(), Outcome::KeyBusy);
    again.key_id = 13;
    again.key_concurrency = 0;
    again.user_concurrency = 1;
    assert_eq!(store.schedule(&again).await.unwrap(), Outcome::UserBusy);
}

async fn sessions_stick_and_move(store: &dyn StateStore) {
    let now = wall_ms();
    let cands = [cand(A, 1, 0), cand(B, 1, 0)];
    let session = format!("s-{}", lease());
    let with_session = |l: &'static str| {
        let mut r = req(now, l, &cands);
        r.session = Some(Box::leak(session.clone().into_boxed_str()));
        r
    };
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let (first, held) = take(store, &with_session(leak(lease()))).await;
    give_back(store, now, &held).await;
    for _ in 0..5 {
        let (id, held) = take(store, &with_session(leak(lease()))).await;
        assert_eq!(id, first, "a session stays on its account");
        give_back(store, now, &held).await;
    }
    let listed = store.sessions(Some(10), now).await.unwrap();
    let entry = listed
        .iter()
        .find(|s| s.session == session)
        .expect("listed");
    assert_eq!(entry.account_id, first);
    assert!(entry.ttl_ms > 50_000 && entry.ttl_ms <= 60_000, "{entry:?}");

    // The bound account fails: the session moves, with the reason.
    let other = if first == A { B } else { A };
    let l = leak(lease());
    let mut r = with_session(l);
    r.retry = Some(Retry {
        account_id: first,
        mark: Some(Mark {
            account_id: first,
            kind: MarkKind::Unavailable,
            until_ms: now + 5_000,
            reason: "upstream_5xx".into(),
        }),
    });
    r.exclude = Box::leak(vec![first].into_boxed_slice());
    assert_eq!(
        store.schedule(&r).await.unwrap(),
        Outcome::Picked {
            account_id: other,
            switched: Some(Switch {
                from: first,
                reason: SwitchReason::Failed
            })
        }
    );
    let r = with_session(leak(lease()));
    assert_eq!(
        store.schedule(&r).await.unwrap(),
        Outcome::Picked {
            account_id: other,
            switched: None
        },
        "the new binding holds"
    );
    let marks = store.marks(now).await.unwrap();
    assert!(marks.iter().any(|m| m.account_id == first
        && m.kind == MarkKind::Unavailable
        && m.reason == "upstream_5xx"));

    // Rate-limited and gone accounts move sessions too, each with its reason.
    let mut r = with_session(leak(lease()));
    r.retry = Some(Retry {
        account_id: other,
        mark: Some(Mark {
            account_id: other,
            kind: MarkKind::RateLimited,
            until_ms: now + 5_000,
            reason: "429".into(),
        }),
    });
    assert_eq!(
        store.schedule(&r).await.unwrap(),
        Outcome::NoAccount,
        "{first} unavailable, {other} rate-limited"
    );
    let only_c = [cand(C, 1, 0)];
    let mut r = req(now + 6_000, leak(lease()), &only_c);
    r.session = Some(leak(session.clone()));
    assert_eq!(
        store.schedule(&r).await.unwrap(),
        Outcome::Picked {
            account_id: C,
            switched: Some(Switch {
                from: other,
                reason: SwitchReason::NotSchedulable
            })
        },
        "{other} is no longer a candidate"
    );
    assert_eq!(store.clear_marks(None, Some(first)).await.unwrap(), 1);
    assert!(store.sessions(Some(999), now).await.unwrap().is_empty());
    let cleared = store
        .clear_sessions(&Filter {
            id: Some(10),
            session: Some(session.clone()),
        })
        .await
        .unwrap();
    assert_eq!(cleared, 1);
}

async fn full_bound_account_overflows_without_rebinding(store: &dyn StateStore) {
    let now = wall_ms();
    // Own accounts: earlier cases leave leases on A and B.
    let cands = [cand(101, 1, 1), cand(102, 1, 1)];
    let (l1, l2, l3) = (lease(), lease(), lease());
    let session = format!("s-{}", lease());
    let mut r = req(now, &l1, &cands);
    r.key_id = 14;
    r.session = Some(&session);
    let (first, held) = take(store, &r).await;
    let mut r2 = r.clone();
    r2.lease = &l2;
    let (second, held2) = take(store, &r2).await;
    assert_ne!(first, second, "the bound account is full: overflow");
    give_back(store, now, &held).await;
    give_back(store, now, &held2).await;
    let mut r3 = r.clone();
    r3.lease = &l3;
    assert_eq!(
        take(store, &r3).await.0,
        first,
        "the binding survived the overflow"
    );
}

async fn marks_and_their_rules(store: &dyn StateStore) {
    let now = wall_ms();
    let cands = [cand(301, 1, 0), cand(302, 2, 0)];
    let limited = |until: i64| Mark {
        account_id: 301,
        kind: MarkKind::RateLimited,
        until_ms: until,
        reason: "429".into(),
    };
    mark_account(store, &limited(now + 2_000), now)
        .await
        .unwrap();
    // An earlier reset arriving later does not shorten the known one.
    mark_account(store, &limited(now + 1_000), now)
        .await
        .unwrap();
    let l = lease();
    assert_eq!(
        picked(&store.schedule(&req(now, &l, &cands)).await.unwrap()),
        302
    );
    let l = lease();
    assert_eq!(
        picked(&store.schedule(&req(now + 1_500, &l, &cands)).await.unwrap()),
        302,
        "still limited at +1.5 s"
    );
    let l = lease();
    assert_eq!(
        picked(&store.schedule(&req(now + 2_001, &l, &cands)).await.unwrap()),
        301,
        "back after the reset, without anyone clearing it"
    );
    let mut marks = store.marks(now).await.unwrap();
    marks.retain(|m| m.account_id == 301);
    assert_eq!(
        marks,
        vec![limited(now + 2_000)],
        "listed with its reset time"
    );
    // Nothing usable at all is not the same as everything busy.
    let both = [cand(301, 1, 0)];
    let l = lease();
    let mut r = req(now, &l, &both);
    r.exclude = &[301];
    assert_eq!(store.schedule(&r).await.unwrap(), Outcome::NoAccount);
    assert_eq!(
        store
            .clear_marks(Some(MarkKind::RateLimited), Some(301))
            .await
            .unwrap(),
        1
    );
    let l = lease();
    assert_eq!(
        picked(&store.schedule(&req(now, &l, &cands)).await.unwrap()),
        301
    );
}

async fn waiting_is_first_come_first_served(store: &dyn StateStore) {
    let now = wall_ms();
    let pool = format!("pool-{}", lease());
    let cands = [cand(201, 1, 1)];
    let (l1, l2, l3, l4) = (lease(), lease(), lease(), lease());
    let queued = |l: &'static str, at: i64| {
        let mut r = req(now + at, l, &cands);
        r.queue = Some(Box::leak(pool.clone().into_boxed_str()));
        r
    };
    let leak = |s: &String| -> &'static str { Box::leak(s.clone().into_boxed_str()) };
    let (_, held1) = take(store, &queued(leak(&l1), 0)).await;
    assert_eq!(
        store.schedule(&queued(leak(&l2), 1)).await.unwrap(),
        Outcome::Full
    );
    assert_eq!(
        store.schedule(&queued(leak(&l3), 2)).await.unwrap(),
        Outcome::Full
    );
    give_back(store, now + 3, &held1).await;
    assert_eq!(
        store.schedule(&queued(leak(&l3), 4)).await.unwrap(),
        Outcome::Full,
        "the slot belongs to the request that waited longest"
    );
    assert_eq!(
        store.schedule(&queued(leak(&l4), 5)).await.unwrap(),
        Outcome::Full,
        "a newcomer does not jump the line"
    );
    let (_, held2) = take(store, &queued(leak(&l2), 6)).await;
    give_back(store, now + 7, &held2).await;
    let (_, held3) = take(store, &queued(leak(&l3), 8)).await;
    give_back(store, now + 9, &held3).await;
    // l4 stopped asking: after the queue TTL it no longer holds its place.
    let l5 = lease();
    take(store, &queued(leak(&l5), 3_000)).await;
    // A request that gives up leaves the line at once.
    let (l6, l7) = (lease(), lease());
    assert_eq!(
        store.schedule(&queued(leak(&l6), 3_001)).await.unwrap(),
        Outcome::Full
    );
    store.leave_queue(&pool, &l6).await.unwrap();
    store.leave_queue(&pool, &l5).await.unwrap();
    assert_eq!(
        store.schedule(&queued(leak(&l7), 3_002)).await.unwrap(),
        Outcome::Full,
        "l5 still holds A, but l7 is first in line"
    );
    let _ = l4;
}

async fn weights_share_picks(store: &dyn StateStore) {
    let now = wall_ms();
    let cands = [
        Candidate {
            weight: 1,
            ..cand(401, 1, 0)
        },
        Candidate {
            weight: 3,
            ..cand(402, 1, 0)
        },
    ];
    let mut b = 0;
    for i in 0..400 {
        let l = lease();
        let mut r = req(now, &l, &cands);
        r.random = f64::from(i) / 400.0;
        if picked(&store.schedule(&r).await.unwrap()) == 402 {
            b += 1;
        }
    }
    assert_eq!(b, 300);
}

async fn release_binds_response_sessions(store: &dyn StateStore) {
    let now = wall_ms();
    let cands = [cand(501, 1, 0), cand(502, 1, 0)];
    let l = lease();
    let mut r = req(now, &l, &cands);
    r.key_id = 15;
    let (id, held) = take(store, &r).await;
    let session = format!("resp-{}", lease());
    store
        .release(&Release {
            now_ms: now,
            held: Some(&held),
            bind: Some(&Bind {
                session: session.clone(),
                account_id: id,
                ttl_ms: 60_000,
            }),
            mark: None,
        })
        .await
        .unwrap();
    for _ in 0..3 {
        let l = lease();
        let mut r = req(now, &l, &cands);
        r.key_id = 15;
        r.session = Some(&session);
        assert_eq!(take(store, &r).await.0, id);
    }
    assert_eq!(
        store
            .in_use(now)
            .await
            .unwrap()
            .iter()
            .filter(|u| u.scope == Scope::Key && u.id == 15)
            .map(|u| u.count)
            .sum::<u32>(),
        3
    );
    assert!(
        store
            .clear_in_use(Some(Scope::Key), Some(15))
            .await
            .unwrap()
            >= 1
    );
    assert!(
        store
            .in_use(now)
            .await
            .unwrap()
            .iter()
            .all(|u| !(u.scope == Scope::Key && u.id == 15))
    );
}

async fn sessions_expire(store: &dyn StateStore) {
    let cands = [cand(601, 1, 0), cand(602, 1, 0)];
    let session = format!("s-{}", lease());
    let l = lease();
    let mut r = req(wall_ms(), &l, &cands);
    r.key_id = 16;
    r.session = Some(&session);
    r.session_ttl_ms = 100;
    take(store, &r).await;
    assert_eq!(store.sessions(Some(16), wall_ms()).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        store
            .sessions(Some(16), wall_ms())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn contract(store: &dyn StateStore) {
    spreads_evenly_and_prefers_priority(store).await;
    concurrency_limits_and_lease_expiry(store).await;
    key_and_user_limits(store).await;
    sessions_stick_and_move(store).await;
    full_bound_account_overflows_without_rebinding(store).await;
    marks_and_their_rules(store).await;
    waiting_is_first_come_first_served(store).await;
    weights_share_picks(store).await;
    release_binds_response_sessions(store).await;
    sessions_expire(store).await;
}

fn redis_url() -> Option<String> {
    std::env::var("AIPROXY_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

fn namespace() -> String {
    format!("aiproxy-test-{}-{}", std::process::id(), wall_ms())
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    contract(&MemoryStore::default()).await;
}

#[tokio::test]
async fn redis_store_keeps_the_contract() {
    let Some(url) = redis_url() else {
        eprintln!("AIPROXY_TEST_REDIS_URL unset: Redis contract not run");
        return;
    };
    let store = RedisStore::open(&url, None, &namespace(), Duration::from_secs(2)).unwrap();
    store
        .ping()
        .await
        .expect("AIPROXY_TEST_REDIS_URL is set but Redis does not answer");
    contract(&store).await;
    // Everything this run wrote goes away.
    store.clear_sessions(&Filter::default()).await.unwrap();
    store.clear_in_use(None, None).await.unwrap();
    store.clear_marks(None, None).await.unwrap();
}

/// A TCP hop in front of Redis that a test can cut and restore.
struct Hop {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Hop {
    async fn start(port: u16, target: String) -> Hop {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .unwrap();
        let listener = socket.listen(64).unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Hop {
            port,
            task: Some(task),
        }
    }

    /// Drops the listener and every connection through it.
    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn schedule_once(store: &dyn StateStore) -> Held {
    let cands = [cand(801, 1, 0)];
    let l = lease();
    take(store, &req(wall_ms(), &l, &cands)).await.1
}

#[tokio::test]
async fn relaying_survives_a_redis_that_is_down_at_start() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let redis = RedisStore::open(
        &format!("redis://127.0.0.1:{port}/"),
        None,
        &namespace(),
        Duration::from_millis(300),
    )
    .unwrap();
    let store = Resilient::new(redis);
    let held = schedule_once(&store).await;
    assert!(store.degraded());
    give_back(&store, wall_ms(), &held).await;
    assert!(
        store.in_use(wall_ms()).await.is_err(),
        "the operator's view says Redis is away rather than showing one node's memory"
    );
}

#[tokio::test]
async fn a_redis_blip_degrades_to_local_state_and_recovers() {
    let Some(url) = redis_url() else {
        eprintln!("AIPROXY_TEST_REDIS_URL unset: Redis blip test not run");
        return;
    };
    let target = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut hop = Hop::start(0, target.clone()).await;
    let port = hop.port;
    let ns = namespace();
    let redis = RedisStore::open(
        &format!("redis://127.0.0.1:{port}/"),
        None,
        &ns,
        Duration::from_millis(300),
    )
    .unwrap();
    let store = Resilient::new(redis);
    let shared = RedisStore::open(&url, None, &ns, Duration::from_secs(2)).unwrap();

    let held = schedule_once(&store).await;
    assert!(!store.degraded());
    let on_redis = |n: u32| InUse {
        scope: Scope::Account,
        id: 801,
        count: n,
    };
    assert!(
        shared
            .in_use(wall_ms())
            .await
            .unwrap()
            .contains(&on_redis(1))
    );

    hop.cut().await;
    let local = schedule_once(&store).await;
    assert!(store.degraded(), "the cut was noticed");
    give_back(&store, wall_ms(), &local).await;

    let _hop = Hop::start(port, target).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    give_back(&store, wall_ms(), &held).await;
    assert!(!store.degraded(), "back on Redis after the retry interval");
    assert!(
        !shared
            .in_use(wall_ms())
            .await
            .unwrap()
            .contains(&on_redis(1)),
        "the lease taken before the blip was released on Redis"
    );
    shared.clear_in_use(None, None).await.unwrap();
}
