// Formatters: exact money from decimal strings, token counts, dates in a given zone, durations.
import { describe, expect, it } from 'vitest'
import {
  compareDecimals,
  fromScaled,
  percentOf,
  roundScaled,
  sumDecimals,
  toScaled,
} from '@/utils/decimal'
import {
  dayKeys,
  formatDate,
  formatDateTime,
  formatDuration,
  formatInt,
  formatMoney,
  formatMs,
  formatBytes,
  formatPercent,
  formatPrice,
  formatRelative,
  formatTime,
  formatTokens,
} from '@/utils/format'
import { sumUsage } from '@/utils/usage'
import type { UsageTotals } from '@/api/types'

describe('decimal strings', () => {
  it('parse to scaled integers and back', () => {
    expect(toScaled('1.5')).toBe(15_000_000_000n)
    expect(toScaled('-0.0000000001')).toBe(-1n)
    expect(toScaled('.5')).toBe(5_000_000_000n)
    expect(toScaled('12')).toBe(120_000_000_000n)
    expect(toScaled('abc')).toBeNull()
    expect(toScaled('')).toBeNull()
    expect(toScaled(null)).toBeNull()
    expect(fromScaled(15_000_000_000n)).toBe('1.5')
    expect(fromScaled(-1n)).toBe('-0.0000000001')
    expect(fromScaled(0n)).toBe('0')
  })

  it('round past ten places half away from zero', () => {
    expect(toScaled('0.00000000005')).toBe(1n)
    expect(toScaled('0.00000000004')).toBe(0n)
    expect(toScaled('-0.00000000005')).toBe(-1n)
  })

  it('sum without float drift', () => {
    expect(0.1 + 0.2).not.toBe(0.3)
    expect(sumDecimals(['0.1', '0.2'])).toBe('0.3')
    expect(sumDecimals(Array(10).fill('0.1'))).toBe('1')
    expect(sumDecimals(['12345678901234.0000000001', '0.0000000009'])).toBe('12345678901234.000000001')
    expect(sumDecimals(['1', null, undefined, 'x'])).toBe('1')
  })

  it('round, compare and take percentages exactly', () => {
    expect(roundScaled(toScaled('1.23455')!, 4)).toBe(toScaled('1.2346'))
    expect(roundScaled(toScaled('-1.23455')!, 4)).toBe(toScaled('-1.2346'))
    expect(compareDecimals('10.5', '9.99')).toBe(1)
    expect(compareDecimals('0.10', '0.1')).toBe(0)
    expect(compareDecimals(null, '0')).toBe(0)
    expect(percentOf('2.5', '10')).toBe(25)
    expect(percentOf('15', '10')).toBe(100)
    expect(percentOf('1', '0')).toBe(0)
    expect(percentOf('1', '3')).toBe(33.3)
  })
})

describe('formatMoney', () => {
  it('formats decimal strings exactly', () => {
    expect(formatMoney('1234.5')).toBe('$1,234.50')
    expect(formatMoney('0')).toBe('$0.00')
    expect(formatMoney('0.123456')).toBe('$0.1235')
    expect(formatMoney('1.23455')).toBe('$1.2346')
    expect(formatMoney('1.00005', { maxDigits: 4 })).toBe('$1.0001')
    expect(formatMoney('-3.5')).toBe('-$3.50')
    expect(formatMoney('1234567.891', { maxDigits: 2 })).toBe('$1,234,567.89')
  })

  it('keeps precision that floats lose', () => {
    // 0.1 + 0.2 as floats is 0.30000000000000004; as decimal strings it stays 0.3
    expect(formatMoney(sumDecimals(['0.1', '0.2']), { maxDigits: 10 })).toBe('$0.30')
    // A total beyond float precision keeps its last cent.
    expect(formatMoney('90071992547409.99')).toBe('$90,071,992,547,409.99')
    expect(formatMoney('0.0000123456', { maxDigits: 10 })).toBe('$0.0000123456')
  })

  it('shows tiny amounts and missing values', () => {
    expect(formatMoney('0.00001')).toBe('<$0.0001')
    expect(formatMoney('-0.00001')).toBe('>-$0.0001')
    expect(formatMoney(null)).toBe('—')
    expect(formatMoney(undefined)).toBe('—')
    expect(formatMoney('n/a')).toBe('—')
  })

  it('formats prices per million tokens', () => {
    expect(formatPrice('3')).toBe('$3.00')
    expect(formatPrice('0.075')).toBe('$0.075')
    expect(formatPrice('0.0375')).toBe('$0.0375')
  })
})

describe('numbers', () => {
  it('formats token counts compactly', () => {
    expect(formatTokens(0)).toBe('0')
    expect(formatTokens(999)).toBe('999')
    expect(formatTokens(1000)).toBe('1K')
    expect(formatTokens(12_345)).toBe('12.3K')
    expect(formatTokens(999_949)).toBe('999.9K')
    expect(formatTokens(999_950)).toBe('1M')
    expect(formatTokens(1_234_567)).toBe('1.23M')
    expect(formatTokens(4_500_000_000)).toBe('4.5B')
    expect(formatTokens(null)).toBe('—')
  })

  it('formats integers and percentages', () => {
    expect(formatInt(1234567)).toBe('1,234,567')
    expect(formatPercent(42.56)).toBe('42.6%')
    expect(formatPercent(100, 0)).toBe('100%')
    expect(formatPercent(10.04)).toBe('10%')
    expect(formatPercent(100)).toBe('100%')
  })
})

describe('dates', () => {
  const t = '2025-03-09T06:30:05Z'

  it('shows times in the given zone', () => {
    expect(formatDateTime(t, { timeZone: 'UTC' })).toBe('2025-03-09 06:30:05')
    expect(formatDateTime(t, { timeZone: 'Asia/Shanghai' })).toBe('2025-03-09 14:30:05')
    expect(formatDateTime(t, { timeZone: 'America/Los_Angeles' })).toBe('2025-03-08 22:30:05')
    expect(formatDate(t, { timeZone: 'Pacific/Auckland' })).toBe('2025-03-09')
    expect(formatTime(t, { timeZone: 'Asia/Kolkata' })).toBe('12:00:05')
  })

  it('follows daylight saving time', () => {
    // New York switches to EDT on 2025-03-09 at 02:00 local.
    expect(formatDateTime('2025-03-09T06:59:59Z', { timeZone: 'America/New_York' })).toBe('2025-03-09 01:59:59')
    expect(formatDateTime('2025-03-09T07:00:00Z', { timeZone: 'America/New_York' })).toBe('2025-03-09 03:00:00')
  })

  it('shows midnight as 00, not 24', () => {
    expect(formatDateTime('2025-01-01T00:00:00Z', { timeZone: 'UTC' })).toBe('2025-01-01 00:00:00')
  })

  it('shows a dash for missing or invalid times', () => {
    expect(formatDateTime(null)).toBe('—')
    expect(formatDateTime('not a date')).toBe('—')
  })

  it('lists the days of a range', () => {
    expect(dayKeys(new Date('2025-02-27T10:00:00Z'), new Date('2025-03-02T01:00:00Z'))).toEqual([
      '2025-02-27',
      '2025-02-28',
      '2025-03-01',
      '2025-03-02',
    ])
  })
})

describe('durations', () => {
  it('formats seconds with the two largest units', () => {
    expect(formatDuration(0)).toBe('0s')
    expect(formatDuration(45)).toBe('45s')
    expect(formatDuration(125)).toBe('2m 5s')
    expect(formatDuration(3600)).toBe('1h')
    expect(formatDuration(3725)).toBe('1h 2m')
    expect(formatDuration(90061)).toBe('1d 1h')
    expect(formatDuration(90061, 4)).toBe('1d 1h 1m 1s')
    expect(formatDuration(-5)).toBe('0s')
  })

  it('formats milliseconds', () => {
    expect(formatMs(850)).toBe('850 ms')
    expect(formatBytes(0)).toBe('0 B')
    expect(formatBytes(512)).toBe('512 B')
    expect(formatBytes(1536)).toBe('1.5 KiB')
    expect(formatBytes(12 * 1024 * 1024)).toBe('12 MiB')
    expect(formatBytes(undefined)).toBe('—')
    expect(formatMs(1250)).toBe('1.25 s')
    expect(formatMs(12_500)).toBe('12.5 s')
  })

  it('formats times relative to now', () => {
    const now = Date.parse('2025-01-01T12:00:00Z')
    expect(formatRelative('2025-01-01T12:05:03Z', now)).toBe('in 5m 3s')
    expect(formatRelative('2025-01-01T10:00:00Z', now)).toBe('2h ago')
    expect(formatRelative('2025-01-01T12:00:00Z', now)).toBe('now')
  })
})

describe('usage totals', () => {
  it('adds requests, tokens and exact costs', () => {
    const row = (cost: string): UsageTotals => ({
      group: 'm',
      requests: 1,
      input_tokens: 10,
      output_tokens: 5,
      cache_creation_tokens: 1,
      cache_read_tokens: 2,
      total_tokens: 18,
      upstream_cost: cost,
      cost,
    })
    const s = sumUsage([row('0.1'), row('0.2'), row('0.0000000001')])
    expect(s.requests).toBe(3)
    expect(s.total_tokens).toBe(54)
    expect(s.cost).toBe('0.3000000001')
  })
})
