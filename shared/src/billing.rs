//! Packages and their periods: which package pays for a request, whether it
//! has room, and how a charge lands in daily, weekly and monthly usage.
//! The data plane admits with it; the control plane charges with it.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Utc};
use rust_decimal::Decimal;

/// The time zone periods reset in: `UTC` or a fixed offset such as `+08:00`.
pub fn parse_timezone(s: &str) -> Option<FixedOffset> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// The day, ISO week and month an instant falls in, in the billing zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub day: NaiveDate,
    /// ISO year × 100 + ISO week, e.g. 202648.
    pub week: i32,
    /// Year × 100 + month, e.g. 202611.
    pub month: i32,
}

impl Periods {
    pub fn at(t: DateTime<Utc>, tz: FixedOffset) -> Periods {
        let local = t.with_timezone(&tz).date_naive();
        let iso = local.iso_week();
        Periods {
            day: local,
            week: iso.year() * 100 + iso.week() as i32,
            month: local.year() * 100 + local.month() as i32,
        }
    }

    /// `YYYY-MM`, as `user_packages.last_reset_month` stores it.
    pub fn month_label(month: i32) -> String {
        format!("{:04}-{:02}", month / 100, month % 100)
    }

    pub fn parse_month_label(s: &str) -> Option<i32> {
        let (y, m) = s.split_once('-')?;
        Some(y.parse::<i32>().ok()? * 100 + m.parse::<i32>().ok()?)
    }
}

crate::named_enum! {
    /// How a package limits spending.
    pub enum PackageKind refused "type must be subscription or quota" {
        /// USD per day, week and month, each reset at its period's start.
        Subscription = "subscription",
        /// A USD total, used up once.
        Quota = "quota",
    }
}

/// A package's limits and usage, as both planes see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageState {
    pub id: i64,
    pub kind: PackageKind,
    /// `status = active`.
    pub active: bool,
    /// Epoch ms; 0 is unset.
    pub starts_at_ms: i64,
    pub expires_at_ms: i64,
    /// Empty allows every model.
    pub allowed_models: Vec<String>,
    pub daily_quota: Option<Decimal>,
    pub weekly_quota: Option<Decimal>,
    pub monthly_quota: Option<Decimal>,
    pub usage: PackageUsage,
    pub quota_total: Option<Decimal>,
}

/// What a package has used, with the periods its figures belong to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PackageUsage {
    pub daily_used: Decimal,
    pub weekly_used: Decimal,
    pub monthly_used: Decimal,
    pub day: Option<NaiveDate>,
    pub week: Option<i32>,
    pub month: Option<i32>,
    pub quota_used: Decimal,
}

impl PackageUsage {
    /// Adds a charge made at `when`: a period figure grows if `when` is in the
    /// period it counts, starts over if `when` is in a later one, and is left
    /// alone for an earlier one (a late record of a closed period).
    pub fn charge(&mut self, cost: Decimal, when: Periods) {
        fn add<K: PartialOrd + Copy>(
            used: &mut Decimal,
            key: &mut Option<K>,
            at: K,
            cost: Decimal,
        ) {
            match *key {
                Some(k) if k == at => *used += cost,
                Some(k) if k > at => {}
                _ => {
                    *key = Some(at);
                    *used = cost;
                }
            }
        }
        add(&mut self.daily_used, &mut self.day, when.day, cost);
        add(&mut self.weekly_used, &mut self.week, when.week, cost);
        add(&mut self.monthly_used, &mut self.month, when.month, cost);
        self.quota_used += cost;
    }

    /// The figures as of `now`: a period that has ended counts zero.
    pub fn current(&self, now: Periods) -> (Decimal, Decimal, Decimal) {
        let pick = |used: Decimal, current: bool| if current { used } else { Decimal::ZERO };
        (
            pick(self.daily_used, self.day == Some(now.day)),
            pick(self.weekly_used, self.week == Some(now.week)),
            pick(self.monthly_used, self.month == Some(now.month)),
        )
    }

    /// The later of two views of the same package (usage only grows within a period).
    pub fn merge(&mut self, other: &PackageUsage) {
        fn take<K: PartialOrd + Copy>(
            used: &mut Decimal,
            key: &mut Option<K>,
            other_used: Decimal,
            other_key: Option<K>,
        ) {
            if other_key > *key || (other_key == *key && other_used > *used) {
                *key = other_key;
                *used = other_used;
            }
        }
        take(
            &mut self.daily_used,
            &mut self.day,
            other.daily_used,
            other.day,
        );
        take(
            &mut self.weekly_used,
            &mut self.week,
            other.weekly_used,
            other.week,
        );
        take(
            &mut self.monthly_used,
            &mut self.month,
            other.monthly_used,
            other.month,
        );
        self.quota_used = self.quota_used.max(other.quota_used);
    }
}

/// Why a request may not draw on a user's packages, with the seed's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ModelNotAllowed,
    Quota,
    Daily,
    Weekly,
    Monthly,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::ModelNotAllowed => "model not allowed",
            Refusal::Quota => "quota exceeded",
            Refusal::Daily => "daily limit exceeded",
            Refusal::Weekly => "weekly limit exceeded",
            Refusal::Monthly => "monthly limit exceeded",
        }
    }
}

impl PackageState {
    /// Active, started and not expired.
    pub fn in_force(&self, now_ms: i64) -> bool {
        self.active
            && (self.starts_at_ms == 0 || self.starts_at_ms <= now_ms)
            && (self.expires_at_ms == 0 || now_ms < self.expires_at_ms)
    }

    pub fn allows(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }

    /// The first limit this package has reached, if any.
    pub fn exhausted(&self, now: Periods) -> Option<Refusal> {
        let full = |used: Decimal, quota: Option<Decimal>| quota.is_some_and(|q| used >= q);
        match self.kind {
            PackageKind::Subscription => {
                let (day, week, month) = self.usage.current(now);
                if full(day, self.daily_quota) {
                    Some(Refusal::Daily)
                } else if full(week, self.weekly_quota) {
                    Some(Refusal::Weekly)
                } else if full(month, self.monthly_quota) {
                    Some(Refusal::Monthly)
                } else {
                    None
                }
            }
            PackageKind::Quota => full(
                self.usage.quota_used,
                Some(self.quota_total.unwrap_or_default()),
            )
            .then_some(Refusal::Quota),
        }
    }

    /// Subscriptions before quota packages; then the earliest expiry (a
    /// package that never expires last); then the oldest.
    fn draw_key(&self) -> (u8, i64, i64) {
        let kind = match self.kind {
            PackageKind::Subscription => 0,
            PackageKind::Quota => 1,
        };
        let expiry = if self.expires_at_ms == 0 {
            i64::MAX
        } else {
            self.expires_at_ms
        };
        (kind, expiry, self.id)
    }
}

/// What a user's packages say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// The user has no packages at all: unmetered.
    Unmetered,
    /// The package that pays.
    From(i64),
}

/// The package a request for `model` draws on, in draw order, or why none
/// can pay. `exhausted_ok` picks the first package that would pay even when
/// all are used up (the control plane charging requests already served).
pub fn draw<'a>(
    packages: impl IntoIterator<Item = &'a PackageState>,
    model: &str,
    now_ms: i64,
    now: Periods,
    exhausted_ok: bool,
) -> Result<Draw, Refusal> {
    let mut any = false;
    let mut any_in_force = false;
    let mut candidates: Vec<&PackageState> = Vec::new();
    for p in packages {
        any = true;
        if p.in_force(now_ms) {
            any_in_force = true;
            if p.allows(model) {
                candidates.push(p);
            }
        }
    }
    if !any {
        return Ok(Draw::Unmetered);
    }
    if candidates.is_empty() {
        return Err(if any_in_force {
            Refusal::ModelNotAllowed
        } else {
            Refusal::Quota
        });
    }
    candidates.sort_by_key(|p| p.draw_key());
    if let Some(p) = candidates.iter().find(|p| p.exhausted(now).is_none()) {
        return Ok(Draw::From(p.id));
    }
    if exhausted_ok {
        return Ok(Draw::From(candidates[0].id));
    }
    Err(candidates[0].exhausted(now).unwrap_or(Refusal::Quota))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn cst() -> FixedOffset {
        parse_timezone("+08:00").unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn subscription(id: i64, daily: &str, weekly: &str, monthly: &str) -> PackageState {
        PackageState {
            id,
            kind: PackageKind::Subscription,
            active: true,
            starts_at_ms: 0,
            expires_at_ms: 0,
            allowed_models: Vec::new(),
            daily_quota: Some(d(daily)),
            weekly_quota: Some(d(weekly)),
            monthly_quota: Some(d(monthly)),
            usage: PackageUsage::default(),
            quota_total: None,
        }
    }

    fn quota(id: i64, total: &str) -> PackageState {
        PackageState {
            kind: PackageKind::Quota,
            daily_quota: None,
            weekly_quota: None,
            monthly_quota: None,
            quota_total: Some(d(total)),
            ..subscription(id, "0", "0", "0")
        }
    }

    #[test]
    fn timezones_parse() {
        assert_eq!(parse_timezone("UTC").unwrap().local_minus_utc(), 0);
        assert_eq!(
            parse_timezone("+08:00").unwrap().local_minus_utc(),
            8 * 3600
        );
        assert_eq!(
            parse_timezone("-05:30").unwrap().local_minus_utc(),
            -(5 * 3600 + 1800)
        );
        assert!(parse_timezone("Asia/Shanghai").is_none());
        assert!(parse_timezone("+25:00").is_none());
    }

    #[test]
    fn periods_follow_the_billing_zone() {
        // 2026-11-29 (Sunday) 16:30 UTC is Monday 00:30 in UTC+8: a new day and ISO week.
        let p = Periods::at(at("2026-11-29T16:30:00Z"), cst());
        assert_eq!(p.day, NaiveDate::from_ymd_opt(2026, 11, 30).unwrap());
        assert_eq!(p.week, 202649);
        assert_eq!(p.month, 202611);
        let utc = Periods::at(at("2026-11-29T16:30:00Z"), parse_timezone("UTC").unwrap());
        assert_eq!((utc.day.day(), utc.week), (29, 202648));
        // 2026-11-30 16:00 UTC is December 1st in UTC+8.
        assert_eq!(Periods::at(at("2026-11-30T16:00:00Z"), cst()).month, 202612);
        assert_eq!(Periods::month_label(202612), "2026-12");
        assert_eq!(Periods::parse_month_label("2026-12"), Some(202612));
    }

    #[test]
    fn charges_reset_at_day_week_and_month_boundaries() {
        let tz = cst();
        let mut u = PackageUsage::default();
        // Monday 2026-11-30 and Tuesday 12-01 (UTC+8) share a week, not a month.
        u.charge(d("1.5"), Periods::at(at("2026-11-30T01:00:00Z"), tz));
        u.charge(d("2"), Periods::at(at("2026-11-30T15:00:00Z"), tz));
        assert_eq!(
            (u.daily_used, u.weekly_used, u.monthly_used),
            (d("3.5"), d("3.5"), d("3.5"))
        );
        let tuesday = Periods::at(at("2026-11-30T16:30:00Z"), tz);
        u.charge(d("1"), tuesday);
        assert_eq!(
            (u.daily_used, u.weekly_used, u.monthly_used),
            (d("1"), d("4.5"), d("1"))
        );
        // A late record of Monday changes neither closed period, but the week and quota.
        u.charge(d("0.25"), Periods::at(at("2026-11-30T02:00:00Z"), tz));
        assert_eq!(
            (u.daily_used, u.weekly_used, u.monthly_used),
            (d("1"), d("4.75"), d("1"))
        );
        assert_eq!(u.quota_used, d("4.75"));
        // Next Monday: a new week too.
        let next_week = Periods::at(at("2026-12-06T16:00:00Z"), tz);
        assert_eq!(u.current(next_week), (Decimal::ZERO, Decimal::ZERO, d("1")));
        u.charge(d("3"), next_week);
        assert_eq!(
            (u.daily_used, u.weekly_used, u.monthly_used),
            (d("3"), d("3"), d("4"))
        );
    }

    #[test]
    fn subscriptions_first_then_earliest_expiry() {
        let now = at("2026-11-26T08:00:00Z");
        let p = Periods::at(now, cst());
        let ms = now.timestamp_millis();
        let mut q_late = quota(1, "10");
        q_late.expires_at_ms = ms + 10_000;
        let mut q_soon = quota(2, "10");
        q_soon.expires_at_ms = ms + 5_000;
        let mut sub = subscription(3, "1", "5", "20");
        assert_eq!(
            draw([&q_late, &q_soon, &sub], "m", ms, p, false),
            Ok(Draw::From(3))
        );
        sub.usage.charge(d("1"), p);
        assert_eq!(
            draw([&q_late, &q_soon, &sub], "m", ms, p, false),
            Ok(Draw::From(2))
        );
        q_soon.usage.charge(d("10"), p);
        assert_eq!(
            draw([&q_late, &q_soon, &sub], "m", ms, p, false),
            Ok(Draw::From(1))
        );
        q_late.usage.charge(d("10.5"), p);
        assert_eq!(
            draw([&q_late, &q_soon, &sub], "m", ms, p, false),
            Err(Refusal::Daily),
            "the first package's limit names the refusal"
        );
        assert_eq!(
            draw([&q_late, &q_soon, &sub], "m", ms, p, true),
            Ok(Draw::From(3))
        );
        assert_eq!(draw([&q_soon], "m", ms, p, false), Err(Refusal::Quota));
        // An expired package does not count.
        assert_eq!(
            draw([&q_soon], "m", ms + 6_000, p, false),
            Err(Refusal::Quota)
        );
    }

    #[test]
    fn models_users_without_packages_and_weekly_limits() {
        let now = at("2026-11-26T08:00:00Z");
        let (p, ms) = (Periods::at(now, cst()), now.timestamp_millis());
        assert_eq!(draw([], "m", ms, p, false), Ok(Draw::Unmetered));
        let mut only_haiku = quota(1, "10");
        only_haiku.allowed_models = vec!["claude-haiku-4-5".into()];
        assert_eq!(
            draw([&only_haiku], "claude-opus-4-5", ms, p, false),
            Err(Refusal::ModelNotAllowed)
        );
        assert_eq!(
            draw([&only_haiku], "claude-haiku-4-5", ms, p, false),
            Ok(Draw::From(1))
        );
        let mut sub = subscription(2, "100", "5", "100");
        sub.usage.charge(d("5"), p);
        assert_eq!(draw([&sub], "m", ms, p, false), Err(Refusal::Weekly));
        let mut monthly = subscription(3, "100", "100", "5");
        monthly.usage.charge(d("5"), p);
        assert_eq!(draw([&monthly], "m", ms, p, false), Err(Refusal::Monthly));
        monthly.active = false;
        assert_eq!(draw([&monthly], "m", ms, p, false), Err(Refusal::Quota));
    }

    #[test]
    fn merging_keeps_the_later_view() {
        let tz = cst();
        let monday = Periods::at(at("2026-11-30T01:00:00Z"), tz);
        let tuesday = Periods::at(at("2026-11-30T17:00:00Z"), tz);
        let mut mine = PackageUsage::default();
        mine.charge(d("2"), monday);
        let mut theirs = mine.clone();
        theirs.charge(d("1"), tuesday);
        mine.merge(&theirs);
        assert_eq!(mine, theirs);
        let stale = PackageUsage::default();
        mine.merge(&stale);
        assert_eq!(mine, theirs, "an older view changes nothing");
    }
}
