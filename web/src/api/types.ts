// Types of the admin API's request and response bodies (see /api/v1/openapi.json).
// Decimal amounts are strings (USD); times are RFC 3339 UTC strings.

export type Role = 'admin' | 'user'
export type ActiveStatus = 'active' | 'disabled'

export interface ErrorBody {
  error: { code: string; message: string }
}

export interface List<T> {
  items: T[]
  total: number
}

export interface User {
  id: number
  username: string
  role: Role
  status: ActiveStatus
  price_rate: string
  email: string | null
  max_concurrency: number
  created_at: string
  updated_at: string
}

export interface LoginResponse {
  token: string
  token_type?: string
  expires_at: string
  user: User
}

export interface UserCreate {
  username: string
  password: string
  role?: Role
  price_rate?: string
  email?: string
  max_concurrency?: number
}

export interface UserUpdate {
  password?: string
  role?: Role
  status?: ActiveStatus
  price_rate?: string
  email?: string | null
  max_concurrency?: number
}

export type ClientName = 'claude-code' | 'codex-cli' | 'gemini-cli'
export type ClientFilterMode = 'off' | 'simple' | 'strict'
export type BillingType = 'package' | 'standalone'

export interface ApiKey {
  id: number
  user_id: number
  name: string
  key_prefix: string
  billing_type: BillingType
  status: ActiveStatus
  /** Disabled by an administrator: only an administrator enables it again. */
  disabled_by_admin: boolean
  request_count: number
  cost_used: string
  cost_limit: string | null
  rate_limit: number
  allowed_models: string[]
  max_concurrency: number
  expires_at: string | null
  last_used_at: string | null
  created_at: string
  updated_at: string
  client_filter: ClientFilterMode | null
  allowed_clients: ClientName[]
}

export interface ApiKeyCreated extends ApiKey {
  key: string
}

export interface ApiKeyCreate {
  user_id?: number
  name: string
  billing_type?: BillingType
  cost_limit?: string
  rate_limit?: number
  allowed_models?: string[]
  max_concurrency?: number
  expires_at?: string
  client_filter?: ClientFilterMode | null
  allowed_clients?: ClientName[]
}

export interface ApiKeyUpdate {
  name?: string
  status?: ActiveStatus
  billing_type?: BillingType
  cost_limit?: string | null
  rate_limit?: number
  allowed_models?: string[]
  max_concurrency?: number
  expires_at?: string | null
  client_filter?: ClientFilterMode | null
  allowed_clients?: ClientName[]
}

export const ACCOUNT_TYPES = [
  'claude-api',
  'claude-oauth',
  'claude-session-key',
  'openai',
  'openai-responses',
  'gemini-api',
  'gemini-oauth',
] as const
export type AccountType = (typeof ACCOUNT_TYPES)[number]
export type AccountStatus = 'valid' | 'invalid' | 'banned'
export type HealthStatus = 'unchecked' | 'ok' | 'failed' | 'unknown'

export interface Account {
  id: number
  name: string
  type: AccountType
  enabled: boolean
  status: AccountStatus | string
  /** Masked: which fields are set ("••••abcd"), never their values. */
  credentials: Record<string, string>
  base_url: string | null
  proxy_url: string | null
  priority: number
  max_concurrency: number
  weight: number
  bound_api_key_ids: number[]
  bound_user_ids: number[]
  rate_limit_reset_at: string | null
  total_cost: string
  current_load: number
  daily_requests: number
  consecutive_error_count: number
  disabled_reason: string | null
  health_status: HealthStatus
  health_message: string | null
  health_checked_at: string | null
  usage_5h_utilization: number | null
  usage_5h_resets_at: string | null
  usage_7d_utilization: number | null
  usage_7d_resets_at: string | null
  last_used_at: string | null
  created_at: string
  updated_at: string
}

export interface AccountCreate {
  name: string
  type: AccountType
  credentials: Record<string, string>
  base_url?: string
  proxy_url?: string
  priority?: number
  max_concurrency?: number
  weight?: number
  enabled?: boolean
  bound_api_key_ids?: number[]
  bound_user_ids?: number[]
}

export interface AccountUpdate {
  name?: string
  enabled?: boolean
  status?: AccountStatus
  /** Merged into the stored fields; "" removes a field. */
  credentials?: Record<string, string>
  base_url?: string | null
  proxy_url?: string | null
  priority?: number
  max_concurrency?: number
  weight?: number
  rate_limit_reset_at?: string | null
  consecutive_error_count?: number
  bound_api_key_ids?: number[]
  bound_user_ids?: number[]
}

export interface CheckReport {
  account_id: number
  status: 'ok' | 'failed' | 'unknown'
  endpoint: string
  http_status: number | null
  message: string | null
  consecutive_error_count: number
  disabled: boolean
  checked_at: string
}

export type OAuthProvider = 'claude' | 'openai'

export interface OAuthAuthorizeResponse {
  authorize_url: string
  state: string
  expires_at: string
}

export interface OAuthExchange {
  state: string
  code: string
  name: string
  priority?: number
  max_concurrency?: number
  proxy_url?: string
}

export interface RequestLog {
  id: number
  request_id: string
  user_id: number
  api_key_id: number
  /** Admins only: a user's own logs never name the account or node. */
  account_id?: number | null
  node_id?: string
  model: string
  platform: string
  endpoint: string
  status_code: number
  input_tokens: number
  output_tokens: number
  cache_creation_tokens: number
  cache_creation_1h_tokens: number
  cache_read_tokens: number
  total_tokens: number
  /** Admins only: what the operator paid. */
  upstream_cost?: string
  cost: string
  price_version: number
  duration_ms: number
  ttfb_ms: number
  stream: boolean
  error_class: string
  usage_source: 'reported' | 'estimated' | 'missing' | string
  created_at: string
}

export interface RequestLogPage extends List<RequestLog> {
  page: number
  page_size: number
}

/** Filters shared by request logs, their export and usage totals. */
export interface LogFilter {
  user_id?: number
  api_key_id?: number
  account_id?: number
  model?: string
  status_code?: number
  from?: string
  to?: string
}

export type UsageGroup = 'day' | 'model' | 'account' | 'user' | 'key'

export interface UsageTotals {
  /** The user, key or account id, the model, or the day (YYYY-MM-DD, billing zone). */
  group: string
  requests: number
  input_tokens: number
  output_tokens: number
  cache_creation_tokens: number
  cache_read_tokens: number
  total_tokens: number
  /** Admins only. */
  upstream_cost?: string
  cost: string
}

export interface UsageResponse {
  group_by: string
  /** `UTC` or an offset such as `+08:00`. */
  billing_timezone?: string
  items: UsageTotals[]
}

export interface CacheSession {
  key_id: number
  session: string
  account_id: number
  ttl_seconds: number
}

export interface CacheConcurrency {
  accounts: { account_id: number; in_use: number; max_concurrency: number | null }[]
  users: { user_id: number; in_use: number }[]
  keys: { key_id: number; in_use: number }[]
}

export type ConcurrencyScope = 'account' | 'user' | 'key'

export interface CacheUnavailable {
  account_id: number
  reason: string
  until: string
  ttl_seconds: number
}

export interface CacheRateLimited {
  account_id: number
  name: string | null
  reset_at: string
  reason: string | null
}

export interface DataPlaneNode {
  node_id: string
  applied_version: number
  current: boolean
  /** Why the node refused the last snapshot it was sent. */
  last_error?: string | null
  /** Entries of the applied snapshot the node could not use, with reasons. */
  dropped?: string[]
  last_seen: string
}

export interface NodesResponse extends List<DataPlaneNode> {
  snapshot_version: number
}

export interface Cleared {
  cleared: number
}

export type PackageType = 'subscription' | 'quota'

export interface Package {
  id: number
  user_id: number
  name: string
  type: PackageType
  status: ActiveStatus
  daily_quota: string | null
  weekly_quota: string | null
  monthly_quota: string | null
  daily_used: string
  weekly_used: string
  monthly_used: string
  quota_total: string | null
  quota_used: string
  last_reset_day: string | null
  last_reset_week: number | null
  last_reset_month: string | null
  allowed_models: string[]
  starts_at: string | null
  expires_at: string | null
  usage_reset_at: string | null
  created_at: string
  updated_at: string
}

export interface PackageCreate {
  name: string
  type: PackageType
  daily_quota?: string
  weekly_quota?: string
  monthly_quota?: string
  quota_total?: string
  allowed_models?: string[]
  starts_at?: string
  expires_at?: string
}

export interface PackageUpdate {
  name?: string
  status?: ActiveStatus
  daily_quota?: string | null
  weekly_quota?: string | null
  monthly_quota?: string | null
  quota_total?: string | null
  allowed_models?: string[]
  starts_at?: string | null
  expires_at?: string | null
}

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
] as const
export type PriceField = (typeof PRICE_FIELDS)[number]

export type PriceInput = { [K in PriceField]?: string } & {
  input_price: string
  output_price: string
  long_context_threshold?: number
}

export type Price = { [K in PriceField]: string } & {
  model: string
  long_context_threshold: number
  version: number
  updated_at: string
}

/** One entry of a model's price history (version = the history row's id). */
export type PriceVersion = Price & {
  deleted: boolean
  changed_by: string
}

export interface PriceImportResult {
  imported: number
  skipped: number
}

export type SettingType = 'bool' | 'int' | 'float' | 'choice' | 'list'
export type SettingValue = boolean | number | string | string[]

export interface SettingSpec {
  key: string
  type: SettingType
  /** null for bool, {min,max} for numbers, the choices for choice and list. */
  allowed: null | { min: number; max: number } | string[]
  group: string
  help: string
}

export interface SettingsResponse {
  settings: Record<string, SettingValue>
  stored: string[]
  specs: SettingSpec[]
}

export interface AuditEntry {
  id: number
  actor_id: number
  actor: string
  action: string
  target: string
  status: number
  detail: string | null
  created_at: string
}

export interface AuditPage extends List<AuditEntry> {
  next_before_id: number | null
}
