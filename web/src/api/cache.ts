// Scheduling state shared by every node (admin): sessions, concurrency, unavailable and
// rate-limited accounts, and the forced snapshot refresh.
import { request } from './http'
import type {
  CacheConcurrency,
  CacheRateLimited,
  CacheSession,
  CacheUnavailable,
  Cleared,
  ConcurrencyScope,
  List,
  NodesResponse,
} from './types'

export const listSessions = (keyId?: number) =>
  request<List<CacheSession>>('/cache/sessions', { query: { key_id: keyId } })
export const clearSessions = (keyId?: number, session?: string) =>
  request<Cleared>('/cache/sessions', { method: 'DELETE', query: { key_id: keyId, session } })

export const getConcurrency = () => request<CacheConcurrency>('/cache/concurrency')
export const clearConcurrency = (scope?: ConcurrencyScope, id?: number) =>
  request<Cleared>('/cache/concurrency', { method: 'DELETE', query: { scope, id } })

export const listUnavailable = () => request<List<CacheUnavailable>>('/cache/unavailable')
export const clearUnavailable = (accountId?: number) =>
  request<Cleared>('/cache/unavailable', { method: 'DELETE', query: { account_id: accountId } })

export const listRateLimited = () => request<List<CacheRateLimited>>('/cache/rate-limited')
export const clearRateLimited = (accountId?: number) =>
  request<Cleared>('/cache/rate-limited', { method: 'DELETE', query: { account_id: accountId } })

export const listNodes = () => request<NodesResponse>('/nodes')

export const refreshScheduler = () => request<{ version: number }>('/cache/refresh', { method: 'POST' })
