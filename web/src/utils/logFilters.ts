// Request-log filters <-> the page's URL query, so filtered views can be linked and reloaded.
import type { LocationQuery, LocationQueryRaw } from 'vue-router'
import type { LogFilter } from '@/api/types'

export interface LogPageState {
  filter: LogFilter
  page: number
  pageSize: number
}

export const PAGE_SIZES = [20, 50, 100, 200]

function first(v: LocationQuery[string]): string | undefined {
  const s = Array.isArray(v) ? v[0] : v
  return s === null || s === undefined || s === '' ? undefined : s
}

function positiveInt(v: LocationQuery[string]): number | undefined {
  const s = first(v)
  if (s === undefined) return undefined
  const n = Number(s)
  return Number.isInteger(n) && n > 0 ? n : undefined
}

function time(v: LocationQuery[string]): string | undefined {
  const s = first(v)
  return s && !Number.isNaN(Date.parse(s)) ? s : undefined
}

export function stateFromQuery(q: LocationQuery): LogPageState {
  const size = positiveInt(q.page_size)
  return {
    filter: {
      request_id: first(q.request_id)?.trim() || undefined,
      user_id: positiveInt(q.user_id),
      api_key_id: positiveInt(q.api_key_id),
      account_id: positiveInt(q.account_id),
      model: first(q.model)?.trim() || undefined,
      status_code: positiveInt(q.status_code),
      from: time(q.from),
      to: time(q.to),
    },
    page: positiveInt(q.page) ?? 1,
    pageSize: size && PAGE_SIZES.includes(size) ? size : 50,
  }
}

export function queryFromState(s: LogPageState): LocationQueryRaw {
  const q: LocationQueryRaw = {}
  for (const [k, v] of Object.entries(s.filter)) {
    if (v !== undefined && v !== null && v !== '') q[k] = String(v)
  }
  if (s.page > 1) q.page = String(s.page)
  if (s.pageSize !== 50) q.page_size = String(s.pageSize)
  return q
}
