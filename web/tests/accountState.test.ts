// Account state derivation: disabled, banned/invalid, rate-limited, unavailable, health failed, ok.
import { describe, expect, it } from 'vitest'
import type { Account } from '@/api/types'
import { countByState, deriveAccountState, hasUtilization, isOAuthType } from '@/utils/accountState'

const NOW = Date.parse('2025-06-01T12:00:00Z')
const LATER = '2025-06-01T13:00:00Z'
const EARLIER = '2025-06-01T11:00:00Z'

function account(over: Partial<Account> = {}): Account {
  return {
    id: 1,
    name: 'claude-1',
    type: 'claude-api',
    enabled: true,
    status: 'valid',
    credentials: { api_key: '••••abcd' },
    base_url: null,
    proxy_url: null,
    priority: 50,
    max_concurrency: 0,
    weight: 1,
    bound_api_key_ids: [],
    bound_user_ids: [],
    rate_limit_reset_at: null,
    total_cost: '0',
    current_load: 0,
    daily_requests: 0,
    consecutive_error_count: 0,
    disabled_reason: null,
    health_status: 'ok',
    health_message: null,
    health_checked_at: null,
    usage_5h_utilization: null,
    usage_5h_resets_at: null,
    usage_7d_utilization: null,
    usage_7d_resets_at: null,
    last_used_at: null,
    created_at: EARLIER,
    updated_at: EARLIER,
    ...over,
  }
}

describe('deriveAccountState', () => {
  it('is ok for a healthy enabled valid account', () => {
    const s = deriveAccountState(account(), { now: NOW })
    expect(s.kind).toBe('ok')
    expect(s.tag).toBe('success')
    expect(s.detail).toBeNull()
  })

  it('is disabled with its reason first, whatever else is true', () => {
    const s = deriveAccountState(
      account({ enabled: false, disabled_reason: '5 consecutive credential failures', status: 'banned', rate_limit_reset_at: LATER }),
      { now: NOW },
    )
    expect(s.kind).toBe('disabled')
    expect(s.detail).toBe('5 consecutive credential failures')
  })

  it('is banned or invalid from the status', () => {
    expect(deriveAccountState(account({ status: 'banned', disabled_reason: 'permission_error' }), { now: NOW })).toMatchObject({
      kind: 'banned',
      detail: 'permission_error',
      tag: 'danger',
    })
    expect(deriveAccountState(account({ status: 'invalid' }), { now: NOW }).kind).toBe('invalid')
  })

  it('is rate-limited until the stored reset time', () => {
    const s = deriveAccountState(account({ rate_limit_reset_at: LATER }), { now: NOW })
    expect(s.kind).toBe('rate_limited')
    expect(s.until).toBe(LATER)
  })

  it('ignores a reset time in the past', () => {
    expect(deriveAccountState(account({ rate_limit_reset_at: EARLIER }), { now: NOW }).kind).toBe('ok')
  })

  it('takes the later of the stored reset and the shared mark', () => {
    const mark = { account_id: 1, name: 'claude-1', reset_at: '2025-06-01T14:00:00Z', reason: 'rate_limited' }
    const s = deriveAccountState(account({ rate_limit_reset_at: LATER }), { now: NOW, rateLimited: mark })
    expect(s.until).toBe('2025-06-01T14:00:00Z')
    expect(s.detail).toBe('rate_limited')
  })

  it('is unavailable while a mark lasts', () => {
    const mark = { account_id: 1, reason: 'upstream_5xx', until: LATER, ttl_seconds: 3600 }
    const s = deriveAccountState(account(), { now: NOW, unavailable: mark })
    expect(s).toMatchObject({ kind: 'unavailable', detail: 'upstream_5xx', until: LATER })
    expect(deriveAccountState(account(), { now: NOW, unavailable: { ...mark, until: EARLIER } }).kind).toBe('ok')
  })

  it('prefers the rate limit over an unavailable mark', () => {
    const mark = { account_id: 1, reason: 'upstream_5xx', until: LATER, ttl_seconds: 60 }
    expect(deriveAccountState(account({ rate_limit_reset_at: LATER }), { now: NOW, unavailable: mark }).kind).toBe('rate_limited')
  })

  it('reports a failed health check with its message', () => {
    const s = deriveAccountState(account({ health_status: 'failed', health_message: '401 invalid x-api-key' }), { now: NOW })
    expect(s).toMatchObject({ kind: 'health_failed', detail: '401 invalid x-api-key' })
    expect(deriveAccountState(account({ health_status: 'unknown' }), { now: NOW }).kind).toBe('ok')
  })

  it('counts accounts by state', () => {
    const states = [
      deriveAccountState(account(), { now: NOW }),
      deriveAccountState(account({ enabled: false }), { now: NOW }),
      deriveAccountState(account({ enabled: false }), { now: NOW }),
    ]
    const counts = countByState(states)
    expect(counts.ok).toBe(1)
    expect(counts.disabled).toBe(2)
    expect(counts.rate_limited).toBe(0)
  })

  it('knows which types are OAuth and show utilization', () => {
    expect(isOAuthType('claude-oauth')).toBe(true)
    expect(isOAuthType('openai-responses')).toBe(true)
    expect(isOAuthType('claude-api')).toBe(false)
    expect(hasUtilization(account({ type: 'claude-oauth' }))).toBe(true)
    expect(hasUtilization(account())).toBe(false)
    expect(hasUtilization(account({ usage_5h_utilization: 12 }))).toBe(true)
  })
})
