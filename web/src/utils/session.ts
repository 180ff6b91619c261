// Session wording and persistence: what the login page says when a session ends, and the
// session saved in localStorage.
import type { User } from '@/api/types'

export const SESSION_EXPIRED = 'Your session has expired, please sign in again'
export const STORAGE_KEY = 'aiproxy.session'

const GENERIC = new Set(['', 'token expired', 'invalid token', 'missing bearer token', 'unauthorized'])

/** The message shown on the login page after a 401 carrying `apiMessage`. */
export function sessionEndMessage(apiMessage?: string | null): string {
  const m = (apiMessage ?? '').trim()
  if (GENERIC.has(m.toLowerCase()) || /^401\b/.test(m)) return SESSION_EXPIRED
  return m.charAt(0).toUpperCase() + m.slice(1)
}

export interface StoredSession {
  token: string
  expires_at: string
  user: User
}

export function loadSession(storage: Storage = localStorage, now = Date.now()): StoredSession | null {
  try {
    const raw = storage.getItem(STORAGE_KEY)
    if (!raw) return null
    const s = JSON.parse(raw) as StoredSession
    if (!s || typeof s.token !== 'string' || !s.user) return null
    if (s.expires_at && Date.parse(s.expires_at) <= now) {
      storage.removeItem(STORAGE_KEY)
      return null
    }
    return s
  } catch {
    return null
  }
}

export function saveSession(s: StoredSession | null, storage: Storage = localStorage): void {
  try {
    if (s) storage.setItem(STORAGE_KEY, JSON.stringify(s))
    else storage.removeItem(STORAGE_KEY)
  } catch {
    // Private mode or a full storage: the session lasts as long as the page.
  }
}
