// Totals over usage rows (exact for money), and day-indexed rows for charts.
import type { UsageTotals } from '@/api/types'
import { sumDecimals } from './decimal'

export interface UsageSum {
  requests: number
  input_tokens: number
  output_tokens: number
  cache_creation_tokens: number
  cache_read_tokens: number
  total_tokens: number
  upstream_cost: string
  cost: string
}

export function sumUsage(items: UsageTotals[]): UsageSum {
  const n = (pick: (u: UsageTotals) => number) => items.reduce((s, u) => s + (pick(u) || 0), 0)
  return {
    requests: n((u) => u.requests),
    input_tokens: n((u) => u.input_tokens),
    output_tokens: n((u) => u.output_tokens),
    cache_creation_tokens: n((u) => u.cache_creation_tokens),
    cache_read_tokens: n((u) => u.cache_read_tokens),
    total_tokens: n((u) => u.total_tokens),
    upstream_cost: sumDecimals(items.map((u) => u.upstream_cost)),
    cost: sumDecimals(items.map((u) => u.cost)),
  }
}

/** Rows by group (day), and the day axis: the expected range plus any day the server returned. */
export function byDay(items: UsageTotals[], expected: string[]): { days: string[]; rows: Map<string, UsageTotals> } {
  const rows = new Map(items.map((u) => [u.group, u]))
  const days = Array.from(new Set([...expected, ...rows.keys()])).sort()
  return { days, rows }
}
