// Upstream accounts (admin): CRUD, enable/disable, reset, health check, and the guided OAuth flow.
import { request } from './http'
import type {
  Account,
  AccountCreate,
  AccountUpdate,
  CheckReport,
  List,
  OAuthAuthorizeResponse,
  OAuthExchange,
  OAuthProvider,
} from './types'

export const listAccounts = () => request<List<Account>>('/accounts')
export const getAccount = (id: number) => request<Account>(`/accounts/${id}`)
export const createAccount = (body: AccountCreate) => request<Account>('/accounts', { method: 'POST', body })
export const updateAccount = (id: number, body: AccountUpdate) =>
  request<Account>(`/accounts/${id}`, { method: 'PATCH', body })
export const deleteAccount = (id: number) => request<void>(`/accounts/${id}`, { method: 'DELETE' })
export const enableAccount = (id: number) => request<Account>(`/accounts/${id}/enable`, { method: 'POST' })
export const disableAccount = (id: number) => request<Account>(`/accounts/${id}/disable`, { method: 'POST' })
export const resetAccount = (id: number, enable: boolean) =>
  request<Account>(`/accounts/${id}/reset`, { method: 'POST', query: { enable } })
export const resetAllAccounts = (enable: boolean) =>
  request<{ reset: number }>('/accounts/reset', { method: 'POST', query: { enable } })
export const testAccount = (id: number) => request<CheckReport>(`/accounts/${id}/test`, { method: 'POST' })

export const oauthAuthorize = (provider: OAuthProvider) =>
  request<OAuthAuthorizeResponse>('/oauth/authorize', { method: 'POST', body: { provider } })
export const oauthExchange = (body: OAuthExchange) =>
  request<Account>('/oauth/exchange', { method: 'POST', body })
