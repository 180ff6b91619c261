// Runtime settings, model prices (with history and import) and the audit log (admin).
import { request } from './http'
import type { AuditPage, List, Price, PriceImportResult, PriceInput, PriceVersion, SettingsResponse, SettingValue } from './types'

export const getSettings = () => request<SettingsResponse>('/settings')
/** `null` returns a key to its default. */
export const patchSettings = (patch: Record<string, SettingValue | null>) =>
  request<SettingsResponse>('/settings', { method: 'PATCH', body: patch })

export const listPrices = () => request<List<Price>>('/prices')
export const putPrice = (model: string, body: PriceInput) =>
  request<Price>(`/prices/${encodeURIComponent(model)}`, { method: 'PUT', body })
export const deletePrice = (model: string) =>
  request<void>(`/prices/${encodeURIComponent(model)}`, { method: 'DELETE' })
export const priceHistory = (model: string) =>
  request<List<PriceVersion>>(`/prices/${encodeURIComponent(model)}/history`)
export const importPrices = (doc: Record<string, unknown>, only: 'all' | 'existing') =>
  request<PriceImportResult>('/prices/import', { method: 'POST', query: { only }, body: doc })

export interface AuditQuery {
  actor?: string
  target?: string
  before_id?: number
  limit?: number
}
export const listAudit = (q: AuditQuery) => request<AuditPage>('/audit-logs', { query: { ...q } })
