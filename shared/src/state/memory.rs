//! The in-memory state store: the embedded default, and a node's own
//! fallback while Redis is away. Mirrors `schedule.lua` step for step.
use crate::sync::LockExt;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use super::{
    Candidate, Filter, Held, InUse, Mark, MarkKind, Outcome, Release, ScheduleRequest, Scope,
    SessionEntry, StateStore, StoreFuture, Switch, SwitchReason,
};

const MINUTE_MS: i64 = 60_000;
/// How often expired entries are swept out.
const SWEEP_EVERY_MS: i64 = 1_000;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (key, session) → (account, expires at).
    sessions: HashMap<(i64, String), (i64, i64)>,
    /// Lease → expires at, per scope and id.
    leases: HashMap<(Scope, i64), HashMap<String, i64>>,
    /// (kind, account) → (until, reason).
    marks: HashMap<(MarkKind, i64), (i64, String)>,
    /// Admission times in the last minute, per key.
    rpm: HashMap<i64, VecDeque<i64>>,
    /// Account → sequence number of its last pick.
    lru: HashMap<i64, u64>,
    seq: u64,
    queues: HashMap<String, Queue>,
    last_sweep: i64,
}

#[derive(Default)]
struct Queue {
    order: BTreeSet<(i64, String)>,
    /// Ticket → (arrival, deadline).
    members: HashMap<String, (i64, i64)>,
}

impl Queue {
    fn purge(&mut self, now: i64) {
        let order = &mut self.order;
        self.members.retain(|ticket, (arrival, deadline)| {
            let keep = *deadline > now;
            if !keep {
                order.remove(&(*arrival, ticket.clone()));
            }
            keep
        });
    }

    fn remove(&mut self, ticket: &str) {
        if let Some((arrival, _)) = self.members.remove(ticket) {
            self.order.remove(&(arrival, ticket.to_string()));
        }
    }

    /// Requests ahead of `ticket`, or the whole line when it is not in it.
    fn ahead_of(&self, ticket: &str) -> usize {
        match self.members.get(ticket) {
            Some(&(arrival, _)) => self.order.range(..(arrival, ticket.to_string())).count(),
            None => self.order.len(),
        }
    }

    fn join(&mut self, ticket: &str, now: i64, ttl: i64) {
        let entry = self
            .members
            .entry(ticket.to_string())
            .or_insert((now, now + ttl));
        entry.1 = now + ttl;
        self.order.insert((entry.0, ticket.to_string()));
    }
}

impl State {
    fn sweep(&mut self, now: i64) {
        if now - self.last_sweep < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep = now;
        self.sessions.retain(|_, (_, exp)| *exp > now);
        self.marks.retain(|_, (until, _)| *until > now);
        self.leases.retain(|_, set| {
            set.retain(|_, exp| *exp > now);
            !set.is_empty()
        });
        self.rpm.retain(|_, w| {
            while w.front().is_some_and(|&t| t <= now - MINUTE_MS) {
                w.pop_front();
            }
            !w.is_empty()
        });
        self.queues.retain(|_, q| {
            q.purge(now);
            !q.members.is_empty()
        });
    }

    fn live(&mut self, scope: Scope, id: i64, now: i64) -> u32 {
        match self.leases.get_mut(&(scope, id)) {
            Some(set) => {
                set.retain(|_, exp| *exp > now);
                set.len() as u32
            }
            None => 0,
        }
    }

    fn take(&mut self, scope: Scope, id: i64, lease: &str, expires: i64) {
        self.leases
            .entry((scope, id))
            .or_default()
            .insert(lease.to_string(), expires);
    }

    fn give_back(&mut self, scope: Scope, id: i64, lease: &str) {
        if let Some(set) = self.leases.get_mut(&(scope, id)) {
            set.remove(lease);
        }
    }

    fn put_mark(&mut self, m: &Mark, now: i64) {
        if m.until_ms <= now {
            return;
        }
        let entry = self
            .marks
            .entry((m.kind, m.account_id))
            .or_insert((0, String::new()));
        // A later reset already known wins (two 429s racing).
        if m.kind == MarkKind::Unavailable || m.until_ms >= entry.0 {
            *entry = (m.until_ms, m.reason.clone());
        }
    }

    fn marked(&self, kind: MarkKind, id: i64, now: i64) -> bool {
        self.marks
            .get(&(kind, id))
            .is_some_and(|(until, _)| *until > now)
    }

    fn schedule(&mut self, r: &ScheduleRequest<'_>) -> Outcome {
        let now = r.now_ms;
        self.sweep(now);
        match &r.retry {
            Some(retry) => {
                self.give_back(Scope::Account, retry.account_id, r.lease);
                if let Some(m) = &retry.mark {
                    self.put_mark(m, now);
                }
            }
            None => {
                if r.key_rpm > 0 {
                    let window = self.rpm.entry(r.key_id).or_default();
                    while window.front().is_some_and(|&t| t <= now - MINUTE_MS) {
                        window.pop_front();
                    }
                    if window.len() >= r.key_rpm as usize {
                        let oldest = window.front().copied().unwrap_or(now);
                        return Outcome::KeyRateLimited {
                            retry_after_ms: (oldest + MINUTE_MS - now).max(1) as u64,
                        };
                    }
                }
                if r.key_concurrency > 0
                    && self.live(Scope::Key, r.key_id, now) >= r.key_concurrency
                {
                    return Outcome::KeyBusy;
                }
                if r.user_concurrency > 0
                    && self.live(Scope::User, r.user_id, now) >= r.user_concurrency
                {
                    return Outcome::UserBusy;
                }
            }
        }

        let blocked = |s: &State, c: &Candidate| -> Option<SwitchReason> {
            if r.exclude.contains(&c.id) {
                Some(SwitchReason::Failed)
            } else if s.marked(MarkKind::Unavailable, c.id, now) {
                Some(SwitchReason::Unavailable)
            } else if s.marked(MarkKind::RateLimited, c.id, now) {
                Some(SwitchReason::RateLimited)
            } else {
                None
            }
        };
        let room = |s: &mut State, c: &Candidate| -> u64 {
            if c.max_concurrency == 0 {
                u64::MAX
            } else {
                u64::from(
                    c.max_concurrency
                        .saturating_sub(s.live(Scope::Account, c.id, now)),
                )
            }
        };

        let session_key = r.session.map(|s| (r.key_id, s.to_string()));
        let bound = session_key
            .as_ref()
            .and_then(|k| self.sessions.get(k))
            .filter(|(_, exp)| *exp > now)
            .map(|(account, _)| *account);
        let mut chosen: Option<Candidate> = None;
        let mut switched = None;
        if let Some(bound) = bound {
            match r.candidates.iter().find(|c| c.id == bound) {
                None => {
                    switched = Some(Switch {
                        from: bound,
                        reason: SwitchReason::NotSchedulable,
                    })
                }
                Some(c) => match blocked(self, c) {
                    Some(reason) => {
                        switched = Some(Switch {
                            from: bound,
                            reason,
                        })
                    }
                    None if room(self, c) > 0 => chosen = Some(*c),
                    // Full: this request overflows, the binding stays.
                    None => {}
                },
            }
        }

        if let Some(q) = r.queue {
            let queue = self.queues.entry(q.to_string()).or_default();
            queue.purge(now);
            let ahead = queue.ahead_of(r.lease) as u64;
            if ahead > 0 {
                let mut free: u64 = 0;
                for c in r.candidates {
                    if blocked(self, c).is_none() {
                        free = free.saturating_add(room(self, c));
                    }
                }
                if free <= ahead {
                    self.queues.entry(q.to_string()).or_default().join(
                        r.lease,
                        now,
                        r.queue_ttl_ms as i64,
                    );
                    return Outcome::Full;
                }
            }
        }

        if chosen.is_none() {
            let mut i = 0;
            while i < r.candidates.len() && chosen.is_none() {
                let priority = r.candidates[i].priority;
                let mut level: Vec<Candidate> = Vec::new();
                while i < r.candidates.len() && r.candidates[i].priority == priority {
                    let c = r.candidates[i];
                    if blocked(self, &c).is_none() && room(self, &c) > 0 {
                        level.push(c);
                    }
                    i += 1;
                }
                chosen = self.choose(&level, r.random);
            }
        }

        let Some(chosen) = chosen else {
            let usable = r.candidates.iter().any(|c| blocked(self, c).is_none());
            if !usable {
                return Outcome::NoAccount;
            }
            if let Some(q) = r.queue {
                self.queues.entry(q.to_string()).or_default().join(
                    r.lease,
                    now,
                    r.queue_ttl_ms as i64,
                );
            }
            return Outcome::Full;
        };

        let expires = now + r.lease_ttl_ms as i64;
        self.take(Scope::Account, chosen.id, r.lease, expires);
        if r.retry.is_none() {
            if r.key_rpm > 0 {
                self.rpm.entry(r.key_id).or_default().push_back(now);
            }
            self.take(Scope::Key, r.key_id, r.lease, expires);
            self.take(Scope::User, r.user_id, r.lease, expires);
        }
        self.seq += 1;
        self.lru.insert(chosen.id, self.seq);
        if let Some(key) = session_key {
            let session_expires = now + r.session_ttl_ms as i64;
            match self.sessions.get_mut(&key) {
                // Overflow past a full bound account renews, not rebinds.
                Some((_, exp)) if bound.is_some() && switched.is_none() => {
                    *exp = session_expires;
                }
                _ => {
                    self.sessions.insert(key, (chosen.id, session_expires));
                }
            }
        }
        if let Some(q) = r.queue
            && let Some(queue) = self.queues.get_mut(q)
        {
            queue.remove(r.lease);
        }
        Outcome::Picked {
            account_id: chosen.id,
            switched,
        }
    }

    /// Weighted when weights differ within the level, else least recently used.
    fn choose(&self, level: &[Candidate], random: f64) -> Option<Candidate> {
        let first = level.first()?;
        if level.iter().any(|c| c.weight != first.weight) {
            let total: u64 = level.iter().map(|c| u64::from(c.weight)).sum();
            if total > 0 {
                let mut target = random * total as f64;
                for c in level {
                    target -= f64::from(c.weight);
                    if target < 0.0 {
                        return Some(*c);
                    }
                }
                return level.iter().rev().find(|c| c.weight > 0).copied();
            }
        }
        level
            .iter()
            .min_by_key(|c| self.lru.get(&c.id).copied().unwrap_or(0))
            .copied()
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.locked())
    }
}

impl StateStore for MemoryStore {
    fn schedule<'a>(&'a self, req: &'a ScheduleRequest<'a>) -> StoreFuture<'a, Outcome> {
        ready(self.with(|s| s.schedule(req)))
    }

    fn release<'a>(&'a self, end: &'a Release<'a>) -> StoreFuture<'a, ()> {
        self.with(|s| {
            if let Some(held) = end.held {
                if held.account_id != 0 {
                    s.give_back(Scope::Account, held.account_id, &held.lease);
                }
                s.give_back(Scope::User, held.user_id, &held.lease);
                s.give_back(Scope::Key, held.key_id, &held.lease);
                if let Some(b) = end.bind {
                    let expires = end.now_ms + b.ttl_ms as i64;
                    s.sessions
                        .insert((held.key_id, b.session.clone()), (b.account_id, expires));
                }
            }
            if let Some(m) = end.mark {
                s.put_mark(m, end.now_ms);
            }
        });
        ready(())
    }

    fn renew<'a>(&'a self, held: &'a [Held], now_ms: i64, ttl_ms: u64) -> StoreFuture<'a, ()> {
        self.with(|s| {
            let expires = now_ms + ttl_ms as i64;
            for h in held {
                for (scope, id) in [
                    (Scope::Account, h.account_id),
                    (Scope::User, h.user_id),
                    (Scope::Key, h.key_id),
                ] {
                    if let Some(exp) = s
                        .leases
                        .get_mut(&(scope, id))
                        .and_then(|set| set.get_mut(&h.lease))
                    {
                        *exp = expires;
                    }
                }
            }
        });
        ready(())
    }

    fn leave_queue<'a>(&'a self, queue: &'a str, lease: &'a str) -> StoreFuture<'a, ()> {
        self.with(|s| {
            if let Some(q) = s.queues.get_mut(queue) {
                q.remove(lease);
            }
        });
        ready(())
    }

    fn sessions(&self, key_id: Option<i64>, now_ms: i64) -> StoreFuture<'_, Vec<SessionEntry>> {
        let mut out: Vec<SessionEntry> = self.with(|s| {
            s.sessions
                .iter()
                .filter(|((key, _), (_, exp))| *exp > now_ms && key_id.is_none_or(|k| k == *key))
                .map(|((key, session), (account, exp))| SessionEntry {
                    key_id: *key,
                    session: session.clone(),
                    account_id: *account,
                    ttl_ms: exp - now_ms,
                })
                .collect()
        });
        out.sort_by(|a, b| (a.key_id, &a.session).cmp(&(b.key_id, &b.session)));
        ready(out)
    }

    fn clear_sessions<'a>(&'a self, filter: &'a Filter) -> StoreFuture<'a, u64> {
        let n = self.with(|s| {
            let before = s.sessions.len();
            s.sessions.retain(|(key, session), _| {
                !(filter.id.is_none_or(|k| k == *key)
                    && filter.session.as_ref().is_none_or(|f| f == session))
            });
            (before - s.sessions.len()) as u64
        });
        ready(n)
    }

    fn in_use(&self, now_ms: i64) -> StoreFuture<'_, Vec<InUse>> {
        let mut out: Vec<InUse> = self.with(|s| {
            s.leases
                .iter()
                .map(|((scope, id), set)| InUse {
                    scope: *scope,
                    id: *id,
                    count: set.values().filter(|exp| **exp > now_ms).count() as u32,
                })
                .filter(|u| u.count > 0)
                .collect()
        });
        out.sort_by_key(|u| (u.scope, u.id));
        ready(out)
    }

    fn clear_in_use(&self, scope: Option<Scope>, id: Option<i64>) -> StoreFuture<'_, u64> {
        let n = self.with(|s| {
            let before = s.leases.len();
            s.leases.retain(|(sc, i), _| {
                !(scope.is_none_or(|x| x == *sc) && id.is_none_or(|x| x == *i))
            });
            (before - s.leases.len()) as u64
        });
        ready(n)
    }

    fn marks(&self, now_ms: i64) -> StoreFuture<'_, Vec<Mark>> {
        let mut out: Vec<Mark> = self.with(|s| {
            s.marks
                .iter()
                .filter(|(_, (until, _))| *until > now_ms)
                .map(|((kind, id), (until, reason))| Mark {
                    account_id: *id,
                    kind: *kind,
                    until_ms: *until,
                    reason: reason.clone(),
                })
                .collect()
        });
        out.sort_by_key(|m| (m.account_id, m.kind.as_str()));
        ready(out)
    }

    fn clear_marks(&self, kind: Option<MarkKind>, account_id: Option<i64>) -> StoreFuture<'_, u64> {
        let n = self.with(|s| {
            let before = s.marks.len();
            s.marks.retain(|(k, id), _| {
                !(kind.is_none_or(|x| x == *k) && account_id.is_none_or(|x| x == *id))
            });
            (before - s.marks.len()) as u64
        });
        ready(n)
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        ready(())
    }

    fn is_immediate(&self) -> bool {
        true
    }
}
