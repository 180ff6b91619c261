// The runtime-settings form: which control each spec gets (bool → switch, int/float →
// number with min/max, choice → select, list → multi-select), the form's model, and the
// PATCH body back (changed values only; null returns a key to its default).
import type { SettingSpec, SettingsResponse, SettingValue } from '@/api/types'

export type ControlKind = 'switch' | 'number' | 'select' | 'multiselect'

export interface SettingField {
  key: string
  label: string
  group: string
  help: string
  control: ControlKind
  /** Unit read from the help text ("seconds", "minutes", "days"). */
  unit: string | null
  min?: number
  max?: number
  step?: number
  precision?: number
  options?: string[]
  /** True when the value in force is the default (not stored). */
  isDefault: boolean
}

export interface SettingGroup {
  group: string
  title: string
  fields: SettingField[]
}

const GROUP_TITLES: Record<string, string> = {
  health_check: 'Health checks',
  client_filter: 'Client filter',
  relay: 'Relay and scheduling',
  retention: 'Retention',
}

export function humanize(key: string): string {
  const s = key
    .split('_')
    .filter(Boolean)
    .map((w) => (w === 'ttl' ? 'TTL' : w))
    .join(' ')
  return s.charAt(0).toUpperCase() + s.slice(1)
}

function limits(spec: SettingSpec): { min?: number; max?: number } {
  const a = spec.allowed
  if (a && !Array.isArray(a) && typeof a === 'object') return { min: a.min, max: a.max }
  return {}
}

function choices(spec: SettingSpec): string[] {
  return Array.isArray(spec.allowed) ? spec.allowed.map(String) : []
}

function unitOf(help: string): string | null {
  const m = /^(seconds|minutes|days)\b/i.exec(help.trim())
  return m ? m[1].toLowerCase() : null
}

/** The control for one spec. */
export function fieldFor(spec: SettingSpec, stored: Iterable<string>): SettingField {
  const isDefault = !new Set(stored).has(spec.key)
  const base = {
    key: spec.key,
    label: humanize(spec.key),
    group: spec.group,
    help: spec.help,
    unit: unitOf(spec.help),
    isDefault,
  }
  switch (spec.type) {
    case 'bool':
      return { ...base, control: 'switch' }
    case 'int':
      return { ...base, control: 'number', ...limits(spec), step: 1, precision: 0 }
    case 'float': {
      const { min, max } = limits(spec)
      const span = min !== undefined && max !== undefined ? max - min : 1
      return { ...base, control: 'number', min, max, step: span <= 1 ? 0.05 : span / 100, precision: 2 }
    }
    case 'choice':
      return { ...base, control: 'select', options: choices(spec) }
    case 'list':
      return { ...base, control: 'multiselect', options: choices(spec) }
    default:
      // An unknown type from a newer server: edit it as text through a select of its value.
      return { ...base, control: 'select', options: choices(spec) }
  }
}

export function fieldsFromSettings(resp: SettingsResponse): SettingField[] {
  return resp.specs.map((s) => fieldFor(s, resp.stored))
}

/** Fields by group, in the order the server lists them. */
export function groupFields(fields: SettingField[]): SettingGroup[] {
  const groups: SettingGroup[] = []
  for (const f of fields) {
    let g = groups.find((x) => x.group === f.group)
    if (!g) {
      g = { group: f.group, title: GROUP_TITLES[f.group] ?? humanize(f.group), fields: [] }
      groups.push(g)
    }
    g.fields.push(f)
  }
  return groups
}

/** The form's editable copy of the values in force. */
export function formModel(resp: SettingsResponse): Record<string, SettingValue> {
  const model: Record<string, SettingValue> = {}
  for (const spec of resp.specs) {
    const v = resp.settings[spec.key]
    model[spec.key] = Array.isArray(v) ? [...v] : (v as SettingValue)
  }
  return model
}

/** A form value as the spec's type (numbers clamped to their limits, lists in allowed order). */
export function coerce(spec: SettingSpec, value: unknown): SettingValue {
  switch (spec.type) {
    case 'bool':
      return value === true || value === 'true'
    case 'int':
    case 'float': {
      let n = Number(value)
      if (!Number.isFinite(n)) n = 0
      if (spec.type === 'int') n = Math.round(n)
      const { min, max } = limits(spec)
      if (min !== undefined) n = Math.max(min, n)
      if (max !== undefined) n = Math.min(max, n)
      return n
    }
    case 'list': {
      const picked = new Set(Array.isArray(value) ? value.map(String) : [])
      const allowed = choices(spec)
      return allowed.length ? allowed.filter((c) => picked.has(c)) : [...picked]
    }
    default:
      return String(value ?? '')
  }
}

function same(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) && Array.isArray(b)) {
    if (a.length !== b.length) return false
    const sa = [...a].map(String).sort()
    const sb = [...b].map(String).sort()
    return sa.every((x, i) => x === sb[i])
  }
  return a === b
}

/**
 * The PATCH /settings body: each key in `resets` as null, each other changed value
 * coerced to its type; keys left as they were are not sent.
 */
export function buildSettingsPatch(
  resp: SettingsResponse,
  model: Record<string, unknown>,
  resets: Iterable<string> = [],
): Record<string, SettingValue | null> {
  const reset = new Set(resets)
  const patch: Record<string, SettingValue | null> = {}
  for (const spec of resp.specs) {
    if (reset.has(spec.key)) {
      patch[spec.key] = null
      continue
    }
    if (!(spec.key in model)) continue
    const next = coerce(spec, model[spec.key])
    if (!same(next, resp.settings[spec.key])) patch[spec.key] = next
  }
  return patch
}
