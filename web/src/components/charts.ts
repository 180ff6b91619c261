// The parts of ECharts the console uses (imported on demand to keep the bundle small),
// and option builders shared by the dashboard and usage pages.
import { use } from 'echarts/core'
import { CanvasRenderer } from 'echarts/renderers'
import { BarChart, LineChart, PieChart } from 'echarts/charts'
import { GridComponent, LegendComponent, TooltipComponent } from 'echarts/components'
import type { UsageTotals } from '@/api/types'
import { decimalToNumber } from '@/utils/decimal'
import { formatMoney, formatTokens } from '@/utils/format'

use([CanvasRenderer, BarChart, LineChart, PieChart, GridComponent, LegendComponent, TooltipComponent])

export type ChartOption = Record<string, unknown>

/** Requests (bars) and cost (line) per day. */
export function dailyRequestsCostOption(days: string[], rows: Map<string, UsageTotals>): ChartOption {
  return {
    tooltip: { trigger: 'axis' },
    legend: { data: ['Requests', 'Cost (USD)'], top: 0 },
    grid: { left: 48, right: 56, top: 36, bottom: 28 },
    xAxis: { type: 'category', data: days.map((d) => d.slice(5)) },
    yAxis: [
      { type: 'value', name: 'Requests', minInterval: 1, axisLabel: { formatter: (v: number) => formatTokens(v) } },
      { type: 'value', name: 'USD', axisLabel: { formatter: (v: number) => `$${v}` } },
    ],
    series: [
      { name: 'Requests', type: 'bar', barMaxWidth: 24, data: days.map((d) => rows.get(d)?.requests ?? 0), itemStyle: { color: '#409eff' } },
      {
        name: 'Cost (USD)',
        type: 'line',
        yAxisIndex: 1,
        smooth: true,
        showSymbol: false,
        data: days.map((d) => decimalToNumber(rows.get(d)?.cost)),
        itemStyle: { color: '#e6a23c' },
        tooltip: { valueFormatter: (v: number) => formatMoney(v) },
      },
    ],
  }
}

/** Input, output and cache tokens per day, stacked. */
export function dailyTokensOption(days: string[], rows: Map<string, UsageTotals>): ChartOption {
  const series = (name: string, pick: (u: UsageTotals) => number, color: string) => ({
    name,
    type: 'bar',
    stack: 'tokens',
    barMaxWidth: 24,
    data: days.map((d) => {
      const u = rows.get(d)
      return u ? pick(u) : 0
    }),
    itemStyle: { color },
    tooltip: { valueFormatter: (v: number) => formatTokens(v) },
  })
  return {
    tooltip: { trigger: 'axis' },
    legend: { top: 0 },
    grid: { left: 56, right: 16, top: 36, bottom: 28 },
    xAxis: { type: 'category', data: days.map((d) => d.slice(5)) },
    yAxis: { type: 'value', axisLabel: { formatter: (v: number) => formatTokens(v) } },
    series: [
      series('Input', (u) => u.input_tokens, '#409eff'),
      series('Output', (u) => u.output_tokens, '#67c23a'),
      series('Cache write', (u) => u.cache_creation_tokens, '#e6a23c'),
      series('Cache read', (u) => u.cache_read_tokens, '#909399'),
    ],
  }
}

/** A share of cost by group (model, account, user) as a doughnut; the rest folded into "Other". */
export function costShareOption(items: { name: string; cost: string }[], top = 8): ChartOption {
  const sorted = [...items].sort((a, b) => decimalToNumber(b.cost) - decimalToNumber(a.cost))
  const head = sorted.slice(0, top).map((i) => ({ name: i.name, value: decimalToNumber(i.cost) }))
  const rest = sorted.slice(top).reduce((s, i) => s + decimalToNumber(i.cost), 0)
  if (rest > 0) head.push({ name: 'Other', value: rest })
  return {
    tooltip: { trigger: 'item', valueFormatter: (v: number) => formatMoney(v) },
    legend: { type: 'scroll', orient: 'vertical', right: 0, top: 'middle' },
    series: [
      {
        type: 'pie',
        radius: ['45%', '70%'],
        center: ['35%', '50%'],
        avoidLabelOverlap: true,
        label: { show: false },
        data: head,
      },
    ],
  }
}

/** Horizontal bars of requests and cost by group. */
export function groupBarsOption(items: { name: string; requests: number; cost: string }[], top = 10): ChartOption {
  const sorted = [...items].sort((a, b) => decimalToNumber(b.cost) - decimalToNumber(a.cost)).slice(0, top).reverse()
  return {
    tooltip: { trigger: 'axis', axisPointer: { type: 'shadow' } },
    legend: { top: 0 },
    grid: { left: 8, right: 24, top: 32, bottom: 8, containLabel: true },
    xAxis: [
      { type: 'value', name: 'USD', axisLabel: { formatter: (v: number) => `$${v}` } },
      { type: 'value', name: 'Requests', show: false },
    ],
    yAxis: { type: 'category', data: sorted.map((i) => i.name), axisLabel: { width: 120, overflow: 'truncate' } },
    series: [
      {
        name: 'Cost (USD)',
        type: 'bar',
        barMaxWidth: 22,
        data: sorted.map((i) => decimalToNumber(i.cost)),
        itemStyle: { color: '#e6a23c' },
        tooltip: { valueFormatter: (v: number) => formatMoney(v) },
      },
      { name: 'Requests', type: 'bar', barMaxWidth: 22, xAxisIndex: 1, data: sorted.map((i) => i.requests), itemStyle: { color: '#409eff' } },
    ],
  }
}
