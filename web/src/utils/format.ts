// Formatters for what the console shows: money (from decimal strings), token counts,
// integers, percentages, dates in the browser's (or a given) time zone, and durations.
import { fromScaled, roundScaled, toScaled, SCALE } from './decimal'

const DASH = '—'

function group(whole: string): string {
  return whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',')
}

export interface MoneyOptions {
  /** Most decimal places shown (default 4). */
  maxDigits?: number
  /** Fewest decimal places shown (default 2). */
  minDigits?: number
}

/**
 * "$1,234.5678" from a decimal string, exactly (no float), rounded half away from zero
 * to `maxDigits` and trimmed down to `minDigits`; a non-zero amount that rounds to
 * zero shows as "<$0.0001".
 */
export function formatMoney(value: string | number | null | undefined, opts: MoneyOptions = {}): string {
  const maxDigits = opts.maxDigits ?? 4
  const minDigits = Math.min(opts.minDigits ?? 2, maxDigits)
  const scaled = toScaled(value)
  if (scaled === null) return DASH
  const rounded = roundScaled(scaled, maxDigits)
  if (rounded === 0n && scaled !== 0n) {
    const smallest = `$0.${'0'.repeat(Math.max(0, maxDigits - 1))}1`
    return scaled > 0n ? `<${smallest}` : `>-${smallest}`
  }
  const negative = rounded < 0n
  const plain = fromScaled(negative ? -rounded : rounded)
  const [whole, frac = ''] = plain.split('.')
  const digits = frac.slice(0, Math.min(maxDigits, SCALE)).padEnd(minDigits, '0')
  const text = digits ? `${group(whole)}.${digits}` : group(whole)
  return `${negative ? '-' : ''}$${text}`
}

/** A price per million tokens: up to 6 places, at least 2. */
export function formatPrice(value: string | null | undefined): string {
  return formatMoney(value, { maxDigits: 6, minDigits: 2 })
}

const intFormat = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 })

/** "1,234,567". */
export function formatInt(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return DASH
  return intFormat.format(n)
}

function trimmed(n: number, digits: number): string {
  const s = n.toFixed(digits)
  return s.includes('.') ? s.replace(/\.?0+$/, '') : s
}

/** Token counts, compact: 999, 12.3K, 1.23M, 4.5B. */
export function formatTokens(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return DASH
  const sign = n < 0 ? '-' : ''
  const a = Math.abs(n)
  if (a < 1000) return `${sign}${Math.round(a)}`
  if (a < 999_950) return `${sign}${trimmed(a / 1e3, 1)}K`
  if (a < 999_995_000) return `${sign}${trimmed(a / 1e6, 2)}M`
  return `${sign}${trimmed(a / 1e9, 2)}B`
}

/** "42.5%" from a 0-100 figure. */
export function formatPercent(n: number | null | undefined, digits = 1): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return DASH
  return `${trimmed(n, digits)}%`
}

export interface ZoneOptions {
  /** IANA zone; default the browser's. */
  timeZone?: string
}

const formatters = new Map<string, Intl.DateTimeFormat>()

function parts(date: Date, timeZone: string | undefined): Record<string, string> {
  const key = timeZone ?? ''
  let f = formatters.get(key)
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone,
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      hourCycle: 'h23',
    })
    formatters.set(key, f)
  }
  const out: Record<string, string> = {}
  for (const p of f.formatToParts(date)) out[p.type] = p.value
  if (out.hour === '24') out.hour = '00'
  return out
}

export function parseTime(value: string | number | Date | null | undefined): Date | null {
  if (value === null || value === undefined || value === '') return null
  const d = value instanceof Date ? value : new Date(value)
  return Number.isNaN(d.getTime()) ? null : d
}

/** "2025-03-01 14:05:09" in the browser's zone (or the one given). */
export function formatDateTime(value: string | number | Date | null | undefined, opts: ZoneOptions = {}): string {
  const d = parseTime(value)
  if (!d) return DASH
  const p = parts(d, opts.timeZone)
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`
}

/** "2025-03-01" in the browser's zone (or the one given). */
export function formatDate(value: string | number | Date | null | undefined, opts: ZoneOptions = {}): string {
  const d = parseTime(value)
  if (!d) return DASH
  const p = parts(d, opts.timeZone)
  return `${p.year}-${p.month}-${p.day}`
}

/** "14:05:09" in the browser's zone (or the one given). */
export function formatTime(value: string | number | Date | null | undefined, opts: ZoneOptions = {}): string {
  const d = parseTime(value)
  if (!d) return DASH
  const p = parts(d, opts.timeZone)
  return `${p.hour}:${p.minute}:${p.second}`
}

/** The browser's IANA time zone, e.g. "Europe/Paris". */
export function browserTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC'
}

/** "1d 2h", "3m 5s", "45s": the largest `units` units of a number of seconds. */
export function formatDuration(seconds: number | null | undefined, units = 2): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return DASH
  let s = Math.max(0, Math.round(seconds))
  if (s === 0) return '0s'
  const out: string[] = []
  for (const [label, size] of [
    ['d', 86400],
    ['h', 3600],
    ['m', 60],
    ['s', 1],
  ] as const) {
    const q = Math.floor(s / size)
    if (q > 0 || out.length > 0) {
      if (q > 0) out.push(`${q}${label}`)
      s -= q * size
      if (out.length >= units) break
    }
  }
  return out.join(' ')
}

/** "0 B", "512 B", "1.5 KiB", "12 MiB", "3.25 GiB". */
export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n) || n < 0) return DASH
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = n
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit += 1
  }
  return unit === 0 ? `${Math.round(value)} B` : `${trimmed(value, value < 10 ? 2 : 1)} ${units[unit]}`
}

/** "850 ms", "1.25 s", "12.5 s". */
export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return DASH
  if (ms < 1000) return `${Math.round(ms)} ms`
  return `${trimmed(ms / 1000, ms < 10_000 ? 2 : 1)} s`
}

/** "in 5m 3s" or "2h 10m ago" relative to now. */
export function formatRelative(value: string | number | Date | null | undefined, now: number = Date.now()): string {
  const d = parseTime(value)
  if (!d) return DASH
  const diff = (d.getTime() - now) / 1000
  if (Math.abs(diff) < 1) return 'now'
  return diff > 0 ? `in ${formatDuration(diff)}` : `${formatDuration(-diff)} ago`
}

/** Midnight (browser zone) `days` days before today. */
export function startOfDay(daysAgo = 0, now: Date = new Date()): Date {
  const d = new Date(now.getFullYear(), now.getMonth(), now.getDate() - daysAgo)
  return d
}

/** The RFC 3339 UTC form the API takes. */
export function toApiTime(d: Date): string {
  return d.toISOString()
}

/** Every "YYYY-MM-DD" (UTC dates) from `from` to `to` inclusive, for chart axes. */
export function dayKeys(from: Date, to: Date): string[] {
  const out: string[] = []
  const start = Date.UTC(from.getUTCFullYear(), from.getUTCMonth(), from.getUTCDate())
  const end = Date.UTC(to.getUTCFullYear(), to.getUTCMonth(), to.getUTCDate())
  for (let t = start; t <= end && out.length < 3700; t += 86_400_000) {
    out.push(new Date(t).toISOString().slice(0, 10))
  }
  return out
}
