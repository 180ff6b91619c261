// Route guards by role, safe redirects after login, and the menu each role sees.
import { describe, expect, it } from 'vitest'
import type { RouteMeta } from 'vue-router'
import { canOpen, homeFor, menuFor, resolveNavigation, safeRedirect } from '@/router/guards'
import { pageRoutes, routes } from '@/router/routes'

const admin = { loggedIn: true, role: 'admin' as const }
const user = { loggedIn: true, role: 'user' as const }
const anon = { loggedIn: false, role: null }

function metaOf(name: string): RouteMeta {
  const r = [...routes, ...pageRoutes].find((x) => x.name === name)
  if (!r) throw new Error(`no route ${name}`)
  return r.meta ?? {}
}

function to(name: string, fullPath: string, query: Record<string, string> = {}) {
  return { name, fullPath, meta: metaOf(name), query }
}

const ADMIN_PAGES = ['dashboard', 'accounts', 'users', 'cache', 'settings']
const SHARED_PAGES = ['keys', 'packages', 'usage', 'logs']

describe('resolveNavigation', () => {
  it('sends anonymous visitors to login with a redirect back', () => {
    expect(resolveNavigation(to('accounts', '/accounts?x=1'), anon)).toEqual({ name: 'login', query: { redirect: '/accounts?x=1' } })
    expect(resolveNavigation(to('home', '/'), anon)).toEqual({ name: 'login' })
  })

  it('lets anonymous visitors open the login page', () => {
    expect(resolveNavigation(to('login', '/login'), anon)).toBe(true)
  })

  it('sends a signed-in person away from the login page', () => {
    expect(resolveNavigation(to('login', '/login'), admin)).toEqual({ name: 'dashboard' })
    expect(resolveNavigation(to('login', '/login?redirect=/logs', { redirect: '/logs' }), user)).toBe('/logs')
  })

  it('opens every page for admins', () => {
    for (const name of [...ADMIN_PAGES, ...SHARED_PAGES]) {
      expect(resolveNavigation(to(name, `/${name}`), admin)).toBe(true)
    }
  })

  it('keeps users out of admin pages', () => {
    for (const name of ADMIN_PAGES) {
      expect(resolveNavigation(to(name, `/${name}`), user)).toEqual({ name: 'usage' })
    }
    for (const name of SHARED_PAGES) {
      expect(resolveNavigation(to(name, `/${name}`), user)).toBe(true)
    }
  })

  it('sends / to the home page of the role', () => {
    expect(resolveNavigation(to('home', '/'), admin)).toEqual(homeFor('admin'))
    expect(resolveNavigation(to('home', '/'), user)).toEqual({ name: 'usage' })
  })

  it('lets signed-in people see the not-found page', () => {
    expect(resolveNavigation(to('not-found', '/nope'), user)).toBe(true)
  })

  it('checks roles from meta', () => {
    expect(canOpen({ roles: ['admin'] }, 'user')).toBe(false)
    expect(canOpen({}, 'user')).toBe(true)
    expect(canOpen({}, null)).toBe(false)
    expect(canOpen({ public: true }, null)).toBe(true)
  })
})

describe('safeRedirect', () => {
  it('accepts internal paths only', () => {
    expect(safeRedirect('/keys?user_id=2')).toBe('/keys?user_id=2')
    expect(safeRedirect(['/logs'])).toBe('/logs')
    expect(safeRedirect('https://evil.example')).toBeNull()
    expect(safeRedirect('//evil.example')).toBeNull()
    expect(safeRedirect('/\\evil.example')).toBeNull()
    expect(safeRedirect('/login')).toBeNull()
    expect(safeRedirect(undefined)).toBeNull()
  })
})

describe('menuFor', () => {
  it('shows admins every page', () => {
    expect(menuFor('admin', pageRoutes).map((m) => m.name)).toEqual([
      'dashboard',
      'accounts',
      'users',
      'packages',
      'keys',
      'logs',
      'usage',
      'cache',
      'settings',
    ])
  })

  it('shows users only their own pages', () => {
    expect(menuFor('user', pageRoutes).map((m) => m.name)).toEqual(['packages', 'keys', 'logs', 'usage'])
  })

  it('shows nothing without a session', () => {
    expect(menuFor(null, pageRoutes)).toEqual([])
  })

  it('gives each entry its path and title', () => {
    expect(menuFor('user', pageRoutes)[1]).toEqual({ name: 'keys', path: '/keys', title: 'API keys', icon: 'Key' })
  })
})
