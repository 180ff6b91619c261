// What each upstream account type needs: its label, the credential fields (required or not,
// secret or not), and the write-only credentials body of a create or an edit.
import type { AccountType } from '@/api/types'

export interface CredentialField {
  key: string
  label: string
  required: boolean
  /** Typed into a password field. */
  secret: boolean
  hint?: string
}

export interface AccountTypeInfo {
  type: AccountType
  label: string
  platform: 'Claude' | 'OpenAI' | 'Gemini'
  credentials: CredentialField[]
  defaultBaseUrl: string
}

const tokenUrl: CredentialField = {
  key: 'token_url',
  label: 'Token URL',
  required: false,
  secret: false,
  hint: 'Overrides the OAuth token endpoint used for refreshes',
}

export const ACCOUNT_TYPE_INFO: Record<AccountType, AccountTypeInfo> = {
  'claude-api': {
    type: 'claude-api',
    label: 'Claude API key',
    platform: 'Claude',
    defaultBaseUrl: 'https://api.anthropic.com',
    credentials: [{ key: 'api_key', label: 'API key', required: true, secret: true, hint: 'sk-ant-api03-…' }],
  },
  'claude-oauth': {
    type: 'claude-oauth',
    label: 'Claude subscription (OAuth)',
    platform: 'Claude',
    defaultBaseUrl: 'https://api.anthropic.com',
    credentials: [
      { key: 'access_token', label: 'Access token', required: true, secret: true },
      { key: 'refresh_token', label: 'Refresh token', required: false, secret: true, hint: 'Optional for setup tokens' },
      { key: 'expires_at', label: 'Expires at', required: false, secret: false, hint: 'Epoch seconds; read from the token when empty' },
      tokenUrl,
    ],
  },
  'claude-session-key': {
    type: 'claude-session-key',
    label: 'Claude session key',
    platform: 'Claude',
    defaultBaseUrl: 'https://api.anthropic.com',
    credentials: [
      { key: 'session_key', label: 'Session key', required: true, secret: true, hint: 'The claude.ai sessionKey cookie' },
    ],
  },
  openai: {
    type: 'openai',
    label: 'OpenAI API key',
    platform: 'OpenAI',
    defaultBaseUrl: 'https://api.openai.com',
    credentials: [{ key: 'api_key', label: 'API key', required: true, secret: true, hint: 'sk-…' }],
  },
  'openai-responses': {
    type: 'openai-responses',
    label: 'ChatGPT (Codex) subscription',
    platform: 'OpenAI',
    defaultBaseUrl: 'https://chatgpt.com/backend-api/codex',
    credentials: [
      { key: 'access_token', label: 'Access token', required: true, secret: true },
      { key: 'refresh_token', label: 'Refresh token', required: false, secret: true },
      { key: 'id_token', label: 'ID token', required: false, secret: true, hint: 'The ChatGPT account id is read from it' },
      { key: 'account_id', label: 'Account id', required: false, secret: false, hint: 'When there is no ID token' },
      tokenUrl,
    ],
  },
  'gemini-api': {
    type: 'gemini-api',
    label: 'Gemini API key',
    platform: 'Gemini',
    defaultBaseUrl: 'https://generativelanguage.googleapis.com',
    credentials: [{ key: 'api_key', label: 'API key', required: true, secret: true }],
  },
  'gemini-oauth': {
    type: 'gemini-oauth',
    label: 'Google Code Assist (OAuth)',
    platform: 'Gemini',
    defaultBaseUrl: 'https://cloudcode-pa.googleapis.com',
    credentials: [
      { key: 'access_token', label: 'Access token', required: true, secret: true },
      { key: 'refresh_token', label: 'Refresh token', required: false, secret: true },
      { key: 'expires_at', label: 'Expires at', required: false, secret: false, hint: 'Epoch seconds' },
      { key: 'project_id', label: 'Project id', required: false, secret: false, hint: 'Found or set up automatically when empty' },
      { key: 'client_id', label: 'Client id', required: false, secret: false, hint: "Default: Gemini CLI's" },
      { key: 'client_secret', label: 'Client secret', required: false, secret: true },
      tokenUrl,
    ],
  },
}

export function typeLabel(type: string): string {
  return ACCOUNT_TYPE_INFO[type as AccountType]?.label ?? type
}

/** Credential fields of a type, plus any other field stored on the account (shown as set). */
export function credentialFields(type: AccountType, stored: Record<string, string> = {}): CredentialField[] {
  const known = ACCOUNT_TYPE_INFO[type]?.credentials ?? []
  const extra = Object.keys(stored)
    .filter((k) => k !== 'error' && !known.some((f) => f.key === k))
    .map((k) => ({ key: k, label: k, required: false, secret: true }))
  return [...known, ...extra]
}

/**
 * The `credentials` of a request: on create, every filled field; on edit, only the fields
 * typed in (empty input keeps the stored value) and "" for each field to remove.
 * Undefined when an edit changes no credential.
 */
export function credentialsBody(
  values: Record<string, string>,
  mode: 'create' | 'edit',
  remove: Iterable<string> = [],
): Record<string, string> | undefined {
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(values)) {
    const t = (v ?? '').trim()
    if (t) out[k] = t
  }
  if (mode === 'edit') {
    for (const k of remove) if (!(k in out)) out[k] = ''
    return Object.keys(out).length ? out : undefined
  }
  return out
}

/** Required fields missing from a create (an edit keeps what is stored). */
export function missingRequired(type: AccountType, values: Record<string, string>): string[] {
  return (ACCOUNT_TYPE_INFO[type]?.credentials ?? [])
    .filter((f) => f.required && !(values[f.key] ?? '').trim())
    .map((f) => f.label)
}
