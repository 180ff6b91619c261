// The state of an upstream account as the scheduler sees it, derived from the account row
// and the shared marks (unavailable, rate-limited): one label, colour and detail per account.
import type { Account, AccountType, CacheRateLimited, CacheUnavailable } from '@/api/types'

export type AccountStateKind =
  | 'ok'
  | 'rate_limited'
  | 'unavailable'
  | 'disabled'
  | 'invalid'
  | 'banned'
  | 'health_failed'

export type TagType = 'success' | 'warning' | 'danger' | 'info' | 'primary'

export interface AccountState {
  kind: AccountStateKind
  label: string
  tag: TagType
  /** Why, when it is not ok: the disabled reason, the error class, the health message. */
  detail: string | null
  /** When a rate limit or unavailable mark ends. */
  until: string | null
}

export interface AccountSignals {
  unavailable?: CacheUnavailable | null
  rateLimited?: CacheRateLimited | null
  /** Epoch ms; default Date.now(). */
  now?: number
}

export const STATE_LABELS: Record<AccountStateKind, string> = {
  ok: 'OK',
  rate_limited: 'Rate-limited',
  unavailable: 'Unavailable',
  disabled: 'Disabled',
  invalid: 'Invalid',
  banned: 'Banned',
  health_failed: 'Health check failed',
}

const TAGS: Record<AccountStateKind, TagType> = {
  ok: 'success',
  rate_limited: 'warning',
  unavailable: 'warning',
  disabled: 'info',
  invalid: 'danger',
  banned: 'danger',
  health_failed: 'danger',
}

/** The order states are listed in (worst first after ok). */
export const STATE_ORDER: AccountStateKind[] = [
  'ok',
  'rate_limited',
  'unavailable',
  'health_failed',
  'disabled',
  'invalid',
  'banned',
]

function state(kind: AccountStateKind, detail: string | null = null, until: string | null = null): AccountState {
  return { kind, label: STATE_LABELS[kind], tag: TAGS[kind], detail, until }
}

function later(a: string | null | undefined, b: string | null | undefined, now: number): string | null {
  const ta = a ? Date.parse(a) : NaN
  const tb = b ? Date.parse(b) : NaN
  const va = Number.isFinite(ta) && ta > now
  const vb = Number.isFinite(tb) && tb > now
  if (va && vb) return ta >= tb ? a! : b!
  if (va) return a!
  if (vb) return b!
  return null
}

/**
 * Disabled by an operator or the error threshold first, then an invalid or banned
 * credential, then a rate limit still running, then an unavailable mark, then a failed
 * health check; otherwise ok.
 */
export function deriveAccountState(a: Account, signals: AccountSignals = {}): AccountState {
  const now = signals.now ?? Date.now()
  if (!a.enabled) return state('disabled', a.disabled_reason || null)
  if (a.status === 'banned') return state('banned', a.disabled_reason || null)
  if (a.status === 'invalid') return state('invalid', a.disabled_reason || null)
  const limitedUntil = later(a.rate_limit_reset_at, signals.rateLimited?.reset_at, now)
  if (limitedUntil) return state('rate_limited', signals.rateLimited?.reason || null, limitedUntil)
  const mark = signals.unavailable
  if (mark?.until && Date.parse(mark.until) > now) return state('unavailable', mark.reason || null, mark.until)
  if (a.health_status === 'failed') return state('health_failed', a.health_message || null)
  return state('ok')
}

/** How many accounts are in each state (every state present, zero or not). */
export function countByState(states: AccountState[]): Record<AccountStateKind, number> {
  const counts = Object.fromEntries(STATE_ORDER.map((k) => [k, 0])) as Record<AccountStateKind, number>
  for (const s of states) counts[s.kind] += 1
  return counts
}

/** Types whose credentials are OAuth tokens the control plane refreshes. */
export function isOAuthType(type: AccountType | string): boolean {
  return type === 'claude-oauth' || type === 'claude-session-key' || type === 'openai-responses' || type === 'gemini-oauth'
}

/** Claude subscriptions report 5-hour and 7-day utilization. */
export function hasUtilization(a: Pick<Account, 'type' | 'usage_5h_utilization' | 'usage_7d_utilization'>): boolean {
  return (
    a.type === 'claude-oauth' ||
    a.type === 'claude-session-key' ||
    a.usage_5h_utilization !== null ||
    a.usage_7d_utilization !== null
  )
}
