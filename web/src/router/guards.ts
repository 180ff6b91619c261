// Who may go where: the navigation decision by session and role (pure, so it is tested
// without a browser), the home page of each role, safe post-login redirects, and the menu.
import type { LocationQuery, RouteLocationRaw, RouteMeta, RouteRecordRaw } from 'vue-router'
import type { Role } from '@/api/types'
import './meta'

export interface SessionView {
  loggedIn: boolean
  role: Role | null
}

export interface GuardTarget {
  name?: string | symbol | null
  fullPath: string
  meta: RouteMeta
  query?: LocationQuery
}

export function homeFor(role: Role | null): RouteLocationRaw {
  return role === 'admin' ? { name: 'dashboard' } : { name: 'usage' }
}

/** An internal path to return to after login, or null for anything else. */
export function safeRedirect(raw: unknown): string | null {
  const value = Array.isArray(raw) ? raw[0] : raw
  if (typeof value !== 'string' || !value.startsWith('/') || value.startsWith('//')) return null
  if (value === '/login' || value.startsWith('/login?') || value.startsWith('/\\')) return null
  return value
}

export function canOpen(meta: RouteMeta, role: Role | null): boolean {
  if (meta.public) return true
  if (!role) return false
  return !meta.roles || meta.roles.includes(role)
}

/** true to go ahead, or where to go instead. */
export function resolveNavigation(to: GuardTarget, session: SessionView): true | RouteLocationRaw {
  if (to.meta.public) {
    if (!session.loggedIn) return true
    return safeRedirect(to.query?.redirect) ?? homeFor(session.role)
  }
  if (!session.loggedIn) {
    return to.fullPath && to.fullPath !== '/'
      ? { name: 'login', query: { redirect: to.fullPath } }
      : { name: 'login' }
  }
  if (to.name === 'home') return homeFor(session.role)
  if (!canOpen(to.meta, session.role)) return homeFor(session.role)
  return true
}

export interface MenuItem {
  name: string
  path: string
  title: string
  icon: string
}

/** The sidebar entries a role sees. */
export function menuFor(role: Role | null, pages: RouteRecordRaw[]): MenuItem[] {
  return pages
    .filter((r) => r.meta?.menu && typeof r.name === 'string' && canOpen(r.meta, role))
    .map((r) => ({
      name: r.name as string,
      path: `/${r.path}`,
      title: r.meta?.title ?? String(r.name),
      icon: r.meta?.icon ?? 'Document',
    }))
}
