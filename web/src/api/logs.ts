// Request logs (paged), their CSV export, and usage totals — all with the same filters.
import { request, requestBlob, type Query } from './http'
import type { LogFilter, RequestLogPage, UsageGroup, UsageResponse } from './types'

function filterQuery(f: LogFilter): Query {
  return {
    request_id: f.request_id,
    user_id: f.user_id,
    api_key_id: f.api_key_id,
    account_id: f.account_id,
    model: f.model,
    status_code: f.status_code,
    from: f.from,
    to: f.to,
  }
}

export const listRequestLogs = (f: LogFilter, page: number, pageSize: number) =>
  request<RequestLogPage>('/request-logs', { query: { ...filterQuery(f), page, page_size: pageSize } })

export const exportRequestLogs = (f: LogFilter) =>
  requestBlob('/request-logs/export', { query: filterQuery(f) }, 'request-logs.csv')

export const usageTotals = (groupBy: UsageGroup, f: LogFilter = {}) =>
  request<UsageResponse>('/usage', { query: { group_by: groupBy, ...filterQuery(f) } })
