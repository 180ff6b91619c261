// Account credential bodies (write-only: empty keeps the stored value) and request-log
// filters in the URL.
import { describe, expect, it } from 'vitest'
import { ACCOUNT_TYPE_INFO, credentialFields, credentialsBody, missingRequired } from '@/utils/accountTypes'
import { queryFromState, stateFromQuery } from '@/utils/logFilters'
import { ACCOUNT_TYPES, PRICE_FIELDS, type PriceField } from '@/api/types'
import { priceInput } from '@/utils/priceForm'

describe('account credentials', () => {
  it('knows the fields of every type', () => {
    for (const t of ACCOUNT_TYPES) expect(ACCOUNT_TYPE_INFO[t].credentials.some((f) => f.required)).toBe(true)
    expect(credentialFields('claude-api').map((f) => f.key)).toEqual(['api_key'])
    expect(credentialFields('openai-responses').map((f) => f.key)).toContain('id_token')
  })

  it('lists stored fields the type does not name', () => {
    expect(credentialFields('claude-api', { api_key: '••••', org: '••••' }).map((f) => f.key)).toEqual(['api_key', 'org'])
  })

  it('sends every filled field on create', () => {
    expect(credentialsBody({ access_token: ' at ', refresh_token: '', expires_at: '' }, 'create')).toEqual({ access_token: 'at' })
  })

  it('sends only typed fields on edit, and nothing when none', () => {
    expect(credentialsBody({ access_token: '', refresh_token: 'rt2' }, 'edit')).toEqual({ refresh_token: 'rt2' })
    expect(credentialsBody({ access_token: '', refresh_token: '  ' }, 'edit')).toBeUndefined()
  })

  it('removes a field with an empty string on edit', () => {
    expect(credentialsBody({ id_token: '' }, 'edit', ['id_token'])).toEqual({ id_token: '' })
    // A value typed in wins over removal.
    expect(credentialsBody({ id_token: 'new' }, 'edit', ['id_token'])).toEqual({ id_token: 'new' })
  })

  it('names the required fields missing on create', () => {
    expect(missingRequired('claude-session-key', {})).toEqual(['Session key'])
    expect(missingRequired('claude-api', { api_key: 'sk' })).toEqual([])
  })
})

describe('request-log filters in the URL', () => {
  it('reads filters and paging, ignoring bad values', () => {
    const s = stateFromQuery({ request_id: ' req_01 ', api_key_id: '7', user_id: 'x', status_code: '429', model: ' m ', page: '3', page_size: '20', from: 'nope' })
    expect(s).toEqual({
      filter: { request_id: 'req_01', user_id: undefined, api_key_id: 7, account_id: undefined, model: 'm', status_code: 429, from: undefined, to: undefined },
      page: 3,
      pageSize: 20,
    })
    expect(stateFromQuery({ page_size: '33' }).pageSize).toBe(50)
  })

  it('writes only what is set', () => {
    expect(queryFromState({ filter: { account_id: 2, from: '2025-01-01T00:00:00.000Z' }, page: 1, pageSize: 50 })).toEqual({
      account_id: '2',
      from: '2025-01-01T00:00:00.000Z',
    })
    expect(queryFromState({ filter: {}, page: 2, pageSize: 100 })).toEqual({ page: '2', page_size: '100' })
  })
})

describe('price form', () => {
  const form = (values: Partial<Record<PriceField, string>>) =>
    ({ ...Object.fromEntries(PRICE_FIELDS.map((f) => [f, ''])), ...values }) as Record<PriceField, string>

  it('sends every price, an emptied one as 0, so none keeps a stale value', () => {
    const body = priceInput(form({ input_price: ' 3 ', output_price: '15', cache_read_price: '0.3' }), 0)
    expect(body.input_price).toBe('3')
    expect(body.cache_read_price).toBe('0.3')
    expect(body.cache_write_5m_price).toBe('0')
    expect(body.long_input_price).toBe('0')
    expect(Object.keys(body).sort()).toEqual([...PRICE_FIELDS, 'long_context_threshold'].sort())
  })

  it('sends the long-context prices only with a tier', () => {
    const values = { input_price: '3', output_price: '15', long_input_price: '6' }
    expect(priceInput(form(values), 200000).long_input_price).toBe('6')
    expect(priceInput(form(values), 0).long_input_price).toBe('0')
  })
})
