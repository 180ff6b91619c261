// Session handling: a 401 ends the session, says why on the login page and returns there
// after login; the stored session expires.
import { beforeEach, describe, expect, it, vi } from 'vitest'
import { createPinia, setActivePinia } from 'pinia'
import { ref } from 'vue'
import { configureClient, request } from '@/api/http'
import { useAuthStore } from '@/stores/auth'
import { connectClient } from '@/router/session'
import { loadSession, saveSession, sessionEndMessage, SESSION_EXPIRED, STORAGE_KEY } from '@/utils/session'
import type { User } from '@/api/types'

const admin: User = {
  id: 1,
  username: 'admin',
  role: 'admin',
  status: 'active',
  price_rate: '1',
  email: null,
  max_concurrency: 0,
  created_at: '2025-01-01T00:00:00Z',
  updated_at: '2025-01-01T00:00:00Z',
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } })
}

describe('session messages', () => {
  it('says the session expired for token failures', () => {
    expect(sessionEndMessage('token expired')).toBe(SESSION_EXPIRED)
    expect(sessionEndMessage('invalid token')).toBe(SESSION_EXPIRED)
    expect(sessionEndMessage('')).toBe(SESSION_EXPIRED)
    expect(sessionEndMessage(undefined)).toBe(SESSION_EXPIRED)
    expect(SESSION_EXPIRED).toBe('Your session has expired, please sign in again')
  })

  it("shows the API's own message otherwise", () => {
    expect(sessionEndMessage('user is disabled')).toBe('User is disabled')
  })
})

describe('stored session', () => {
  beforeEach(() => localStorage.clear())

  it('round-trips and drops an expired one', () => {
    const future = new Date(Date.now() + 3600_000).toISOString()
    saveSession({ token: 't', expires_at: future, user: admin })
    expect(loadSession()?.token).toBe('t')
    saveSession({ token: 't', expires_at: '2000-01-01T00:00:00Z', user: admin })
    expect(loadSession()).toBeNull()
    expect(localStorage.getItem(STORAGE_KEY)).toBeNull()
  })

  it('ignores garbage', () => {
    localStorage.setItem(STORAGE_KEY, '{not json')
    expect(loadSession()).toBeNull()
  })
})

describe('401 → logout', () => {
  beforeEach(() => {
    localStorage.clear()
    saveSession({ token: 'live', expires_at: new Date(Date.now() + 3600_000).toISOString(), user: admin })
    setActivePinia(createPinia())
  })

  it('clears the session and sends the person to login with a redirect back', async () => {
    const auth = useAuthStore()
    expect(auth.isLoggedIn).toBe(true)
    const replace = vi.fn().mockResolvedValue(undefined)
    const currentRoute = ref({ fullPath: '/logs?page=2', meta: {}, name: 'logs', matched: [{}] })
    connectClient({ currentRoute, replace } as never)
    const fetchMock = vi.fn().mockResolvedValue(json(401, { error: { code: 'unauthorized', message: 'token expired' } }))
    configureClient({ fetch: fetchMock as unknown as typeof fetch })

    await request('/request-logs').catch(() => undefined)
    expect(fetchMock.mock.calls[0][1].headers.authorization).toBe('Bearer live')
    expect(auth.isLoggedIn).toBe(false)
    expect(auth.token).toBeNull()
    expect(localStorage.getItem(STORAGE_KEY)).toBeNull()
    expect(auth.takeNotice()).toBe(SESSION_EXPIRED)
    expect(replace).toHaveBeenCalledWith({ name: 'login', query: { redirect: '/logs?page=2' } })
  })

  it('uses the address bar when the first navigation has not settled', async () => {
    window.history.pushState({}, '', '/keys?user_id=2')
    const replace = vi.fn().mockResolvedValue(undefined)
    connectClient({ currentRoute: ref({ fullPath: '/', meta: {}, name: undefined, matched: [] }), replace } as never)
    configureClient({ fetch: vi.fn().mockResolvedValue(json(401, { error: { message: 'invalid token' } })) as unknown as typeof fetch })
    await request('/me').catch(() => undefined)
    expect(replace).toHaveBeenCalledWith({ name: 'login', query: { redirect: '/keys?user_id=2' } })
  })

  it('stays on the login page when already there', async () => {
    const replace = vi.fn()
    connectClient({ currentRoute: ref({ fullPath: '/login', meta: { public: true }, name: 'login', matched: [{}] }), replace } as never)
    configureClient({ fetch: vi.fn().mockResolvedValue(json(401, { error: { message: 'invalid token' } })) as unknown as typeof fetch })
    await request('/me').catch(() => undefined)
    expect(replace).not.toHaveBeenCalled()
  })

  it('logs in and stores the session', async () => {
    localStorage.clear()
    setActivePinia(createPinia())
    const auth = useAuthStore()
    const expires = new Date(Date.now() + 86400_000).toISOString()
    configureClient({
      fetch: vi.fn().mockResolvedValue(json(200, { token: 'new', token_type: 'Bearer', expires_at: expires, user: admin })) as unknown as typeof fetch,
    })
    await auth.login('admin', 'pw')
    expect(auth.isAdmin).toBe(true)
    expect(JSON.parse(localStorage.getItem(STORAGE_KEY)!).token).toBe('new')
  })
})
