// The router: HTML5 history, the role guard, page titles, and recovery from failed
// navigations (a stale chunk after a deploy reloads the page; other errors are shown).
import { createRouter, createWebHistory, type Router } from 'vue-router'
import { useAuthStore } from '@/stores/auth'
import { notifyError } from '@/utils/errors'
import { resolveNavigation } from './guards'
import { routes } from './routes'

const RELOAD_FLAG = 'aiproxy.chunk-reload'

function isChunkError(err: unknown): boolean {
  const msg = err instanceof Error ? err.message : String(err)
  return /dynamically imported module|Importing a module script failed|Failed to fetch|Loading chunk/i.test(msg)
}

export function buildRouter(): Router {
  const router = createRouter({
    history: createWebHistory(import.meta.env.BASE_URL),
    routes,
    scrollBehavior: () => ({ top: 0 }),
  })

  router.beforeEach((to) => {
    const auth = useAuthStore()
    return resolveNavigation(to, { loggedIn: auth.isLoggedIn, role: auth.role })
  })

  router.afterEach((to) => {
    document.title = to.meta.title ? `${to.meta.title} · aiproxy` : 'aiproxy'
    sessionStorage.removeItem(RELOAD_FLAG)
  })

  router.onError((err, to) => {
    if (isChunkError(err) && !sessionStorage.getItem(RELOAD_FLAG)) {
      sessionStorage.setItem(RELOAD_FLAG, '1')
      window.location.assign(to.fullPath)
      return
    }
    notifyError(err, 'This page could not be opened')
  })

  return router
}
