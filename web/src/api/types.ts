// Types of the admin API's bodies, named as the console uses them. They come
// from `schema.d.ts`, which `npm run api:types` generates from the control
// plane's OpenAPI document (`controlplane/openapi.json`); only shapes the
// console builds itself (filters, price field lists) are written here.
import type { components, operations } from './schema'

type S = components['schemas']

export type Role = S['Role']
export type ActiveStatus = S['ActiveStatus']
export type ErrorBody = S['ErrorBody']
/** Every list answer: `{ items, total }` and sometimes more. */
export interface List<T> {
  items: T[]
  total: number
}
export type Money = S['Money']

export type User = S['User']
export type LoginResponse = S['Session']
export type UserCreate = S['CreateUser']
export type UserUpdate = S['UpdateUser']

export type ClientName = S['ClientName']
export type ClientFilterMode = S['FilterMode']
export type BillingType = S['BillingType']
export type ApiKey = S['ApiKey']
export type ApiKeyCreated = S['KeyCreated']
export type ApiKeyCreate = S['CreateKey']
export type ApiKeyUpdate = S['UpdateKey']

export type AccountType = S['AccountKind']
export const ACCOUNT_TYPES = [
  'claude-api',
  'claude-oauth',
  'claude-session-key',
  'openai',
  'openai-responses',
  'gemini-api',
  'gemini-oauth',
] as const satisfies readonly AccountType[]
export type AccountStatus = S['AccountStatus']
export type HealthStatus = S['HealthStatus']
export type Account = S['AccountView']
export type AccountCreate = S['CreateAccount']
export type AccountUpdate = S['UpdateAccount']
export type CheckReport = S['CheckReport']

export type OAuthProvider = S['Provider']
export type OAuthAuthorizeResponse = S['AuthorizeStarted']
export type OAuthExchange = S['ExchangeRequest']

export type RequestLog = S['RequestLog']
export type RequestLogPage = S['LogPage']
/** Filters shared by request logs, their export and usage totals. */
export type LogFilter = Omit<
  NonNullable<operations['usage_list']['parameters']['query']>,
  'page' | 'page_size' | 'group_by'
>
export type UsageGroup = S['Grouping']
export type UsageTotals = S['UsageTotals']
export type UsageResponse = S['UsageReport']

export type CacheSession = S['SessionBinding']
export type CacheConcurrency = S['Concurrency']
export type ConcurrencyScope = NonNullable<
  NonNullable<operations['cache_clear_concurrency']['parameters']['query']>['scope']
>
export type CacheUnavailable = S['UnavailableAccount']
export type CacheRateLimited = S['RateLimitedAccount']
export type DataPlaneNode = S['NodeView']
export type NodesResponse = S['NodeList']
export type Cleared = S['Cleared']

export type PackageType = S['PackageKind']
export type Package = S['Package']
export type PackageCreate = S['CreatePackage']
export type PackageUpdate = S['UpdatePackage']

export const PRICE_FIELDS = [
  'input_price',
  'output_price',
  'cache_write_5m_price',
  'cache_write_1h_price',
  'cache_read_price',
  'long_input_price',
  'long_output_price',
  'long_cache_write_5m_price',
  'long_cache_write_1h_price',
  'long_cache_read_price',
] as const satisfies readonly (keyof S['PriceRow'])[]
export type PriceField = (typeof PRICE_FIELDS)[number]
export type PriceInput = S['PriceInput']
export type Price = S['PriceRow']
export type PriceVersion = S['PriceVersion']
export type PriceImportResult = S['ImportReport']

export type SettingSpec = S['SettingSpec']
export type SettingType = SettingSpec['type']
export type SettingValue = boolean | number | string | string[]
/** Settings are read and written by name in the console's forms. */
export type SettingsResponse = Omit<S['SettingsView'], 'settings'> & {
  settings: Record<string, SettingValue>
}

export type AuditEntry = S['AuditEntry']
export type AuditPage = S['AuditPage']
