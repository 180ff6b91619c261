// Exact arithmetic on the API's decimal strings (USD): parsing to scaled integers,
// sums, rounding and comparison without floating-point drift.

/** Places kept by the API's amounts (10⁻¹⁰ USD). */
export const SCALE = 10

const PLAIN = /^([+-])?(\d*)(?:\.(\d*))?$/

/**
 * A decimal string as an integer in units of 10^-scale, rounded half away from zero
 * past `scale` places; null when the text is not a plain decimal.
 */
export function toScaled(value: string | number | null | undefined, scale = SCALE): bigint | null {
  if (value === null || value === undefined) return null
  let text = typeof value === 'number' ? numberToPlain(value) : value.trim()
  if (text === '') return null
  if (/e/i.test(text)) text = numberToPlain(Number(text))
  const m = PLAIN.exec(text)
  if (!m || (m[2] === '' && (m[3] ?? '') === '')) return null
  const negative = m[1] === '-'
  const whole = m[2] || '0'
  const frac = m[3] ?? ''
  const kept = frac.slice(0, scale).padEnd(scale, '0')
  let scaled = BigInt(whole) * 10n ** BigInt(scale) + BigInt(kept || '0')
  const next = frac.charAt(scale)
  if (next !== '' && next >= '5') scaled += 1n
  return negative ? -scaled : scaled
}

function numberToPlain(n: number): string {
  if (!Number.isFinite(n)) return ''
  // toFixed avoids exponent notation for the magnitudes money takes.
  return n.toFixed(SCALE)
}

/** A scaled integer back to a plain decimal string, trailing zeros removed. */
export function fromScaled(value: bigint, scale = SCALE): string {
  const negative = value < 0n
  const abs = negative ? -value : value
  const base = 10n ** BigInt(scale)
  const whole = abs / base
  const frac = (abs % base).toString().padStart(scale, '0').replace(/0+$/, '')
  const text = frac ? `${whole}.${frac}` : `${whole}`
  return negative && abs !== 0n ? `-${text}` : text
}

/** Exact sum of decimal strings; unparsable entries count as zero. */
export function sumDecimals(values: Iterable<string | null | undefined>): string {
  let total = 0n
  for (const v of values) total += toScaled(v) ?? 0n
  return fromScaled(total)
}

/** Rounds a scaled integer to `digits` places, half away from zero. */
export function roundScaled(value: bigint, digits: number, scale = SCALE): bigint {
  if (digits >= scale) return value
  const step = 10n ** BigInt(scale - digits)
  const negative = value < 0n
  const abs = negative ? -value : value
  let q = abs / step
  if ((abs % step) * 2n >= step) q += 1n
  const rounded = q * step
  return negative ? -rounded : rounded
}

/** -1, 0 or 1, comparing decimal strings exactly. */
export function compareDecimals(a: string | null | undefined, b: string | null | undefined): number {
  const x = toScaled(a) ?? 0n
  const y = toScaled(b) ?? 0n
  return x < y ? -1 : x > y ? 1 : 0
}

/** A decimal string as a JS number, for charts and progress bars only. */
export function decimalToNumber(value: string | null | undefined): number {
  const n = Number(value)
  return Number.isFinite(n) ? n : 0
}

/** used / limit in percent (0 when there is no positive limit), capped at 100. */
export function percentOf(used: string | null | undefined, limit: string | null | undefined): number {
  const u = toScaled(used) ?? 0n
  const l = toScaled(limit) ?? 0n
  if (l <= 0n) return 0
  const tenths = Number((u * 1000n) / l) / 10
  return Math.max(0, Math.min(100, tenths))
}

/** Whether the text is a non-negative plain decimal (form validation). */
export function isDecimal(text: string): boolean {
  return /^\d+(\.\d+)?$/.test(text.trim())
}
