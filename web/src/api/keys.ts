// API keys: admins see all (or one user's), users their own.
import { request } from './http'
import type { ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyUpdate, List } from './types'

export const listKeys = (userId?: number) => request<List<ApiKey>>('/api-keys', { query: { user_id: userId } })
export const getKey = (id: number) => request<ApiKey>(`/api-keys/${id}`)
export const createKey = (body: ApiKeyCreate) => request<ApiKeyCreated>('/api-keys', { method: 'POST', body })
export const updateKey = (id: number, body: ApiKeyUpdate) =>
  request<ApiKey>(`/api-keys/${id}`, { method: 'PATCH', body })
export const deleteKey = (id: number) => request<void>(`/api-keys/${id}`, { method: 'DELETE' })
