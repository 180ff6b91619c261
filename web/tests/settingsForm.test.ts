// Settings form: specs → controls, and the form back to a PATCH body (null resets a key).
import { describe, expect, it } from 'vitest'
import type { SettingsResponse } from '@/api/types'
import { buildSettingsPatch, coerce, fieldsFromSettings, formModel, groupFields } from '@/utils/settingsForm'

const resp: SettingsResponse = {
  settings: {
    account_health_check_enabled: false,
    account_health_check_interval: 5,
    filter_mode: 'simple',
    filter_allowed_clients: ['claude-code', 'codex-cli', 'gemini-cli'],
    filter_prompt_similarity: 0.5,
    session_ttl: 3600,
  },
  stored: ['session_ttl'],
  specs: [
    { key: 'account_health_check_enabled', type: 'bool', allowed: null, group: 'health_check', help: 'check every enabled account in the background' },
    { key: 'account_health_check_interval', type: 'int', allowed: { min: 1, max: 1440 }, group: 'health_check', help: 'minutes between checks of one account' },
    { key: 'filter_mode', type: 'choice', allowed: ['simple', 'strict'], group: 'client_filter', help: 'simple checks the User-Agent' },
    { key: 'filter_allowed_clients', type: 'list', allowed: ['claude-code', 'codex-cli', 'gemini-cli'], group: 'client_filter', help: 'client programs admitted' },
    { key: 'filter_prompt_similarity', type: 'float', allowed: { min: 0, max: 1 }, group: 'client_filter', help: 'lowest similarity' },
    { key: 'session_ttl', type: 'int', allowed: { min: 0, max: 2592000 }, group: 'relay', help: 'seconds a conversation stays bound' },
  ],
}

describe('specs to controls', () => {
  const fields = fieldsFromSettings(resp)
  const byKey = Object.fromEntries(fields.map((f) => [f.key, f]))

  it('maps each type to its control', () => {
    expect(byKey.account_health_check_enabled.control).toBe('switch')
    expect(byKey.account_health_check_interval).toMatchObject({ control: 'number', min: 1, max: 1440, step: 1, precision: 0, unit: 'minutes' })
    expect(byKey.filter_prompt_similarity).toMatchObject({ control: 'number', min: 0, max: 1, precision: 2 })
    expect(byKey.filter_prompt_similarity.step).toBeCloseTo(0.05)
    expect(byKey.filter_mode).toMatchObject({ control: 'select', options: ['simple', 'strict'] })
    expect(byKey.filter_allowed_clients).toMatchObject({ control: 'multiselect', options: ['claude-code', 'codex-cli', 'gemini-cli'] })
    expect(byKey.session_ttl.unit).toBe('seconds')
  })

  it('marks which settings are defaults', () => {
    expect(byKey.session_ttl.isDefault).toBe(false)
    expect(byKey.filter_mode.isDefault).toBe(true)
  })

  it('groups fields in server order with titles', () => {
    const groups = groupFields(fields)
    expect(groups.map((g) => g.group)).toEqual(['health_check', 'client_filter', 'relay'])
    expect(groups[0].title).toBe('Health checks')
    expect(groups[0].fields.map((f) => f.label)).toEqual(['Account health check enabled', 'Account health check interval'])
  })
})

describe('form back to a patch', () => {
  it('sends nothing when nothing changed', () => {
    expect(buildSettingsPatch(resp, formModel(resp))).toEqual({})
  })

  it('does not share arrays with the response', () => {
    const model = formModel(resp)
    ;(model.filter_allowed_clients as string[]).pop()
    expect(resp.settings.filter_allowed_clients).toHaveLength(3)
  })

  it('sends changed values coerced to their types', () => {
    const model = formModel(resp)
    model.account_health_check_enabled = true
    model.account_health_check_interval = 7.6
    model.filter_mode = 'strict'
    model.filter_allowed_clients = ['gemini-cli', 'claude-code']
    model.filter_prompt_similarity = 0.75
    expect(buildSettingsPatch(resp, model)).toEqual({
      account_health_check_enabled: true,
      account_health_check_interval: 8,
      filter_mode: 'strict',
      filter_allowed_clients: ['claude-code', 'gemini-cli'],
      filter_prompt_similarity: 0.75,
    })
  })

  it('clamps numbers to their limits', () => {
    const model = formModel(resp)
    model.account_health_check_interval = 0
    model.filter_prompt_similarity = 3
    expect(buildSettingsPatch(resp, model)).toEqual({ account_health_check_interval: 1, filter_prompt_similarity: 1 })
  })

  it('treats a reordered list as unchanged', () => {
    const model = formModel(resp)
    model.filter_allowed_clients = ['gemini-cli', 'codex-cli', 'claude-code']
    expect(buildSettingsPatch(resp, model)).toEqual({})
  })

  it('sends null to return a key to its default', () => {
    const model = formModel(resp)
    model.session_ttl = 10
    expect(buildSettingsPatch(resp, model, ['session_ttl'])).toEqual({ session_ttl: null })
  })

  it('coerces loose form values', () => {
    const spec = resp.specs[1]
    expect(coerce(spec, '12')).toBe(12)
    expect(coerce(spec, undefined)).toBe(1)
    expect(coerce(resp.specs[0], 'true')).toBe(true)
    expect(coerce(resp.specs[3], ['x', 'codex-cli'])).toEqual(['codex-cli'])
  })
})
