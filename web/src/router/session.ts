// Connects the API client to the session: the bearer token comes from the auth store, and
// a 401 ends the session and sends the person to the login page (back here after login).
import type { Router } from 'vue-router'
import { configureClient } from '@/api/http'
import { useAuthStore } from '@/stores/auth'
import { useLookupStore } from '@/stores/lookups'
import { safeRedirect } from './guards'

export function connectClient(router: Pick<Router, 'currentRoute' | 'replace'>): void {
  const auth = useAuthStore()
  configureClient({
    getToken: () => auth.token,
    onUnauthorized: (message) => {
      auth.expire(message)
      useLookupStore().reset()
      const current = router.currentRoute.value
      if (current.meta.public) return
      // Before the first navigation settles the route is the start location: use the address bar.
      const path =
        current.matched.length === 0 && typeof window !== 'undefined'
          ? `${window.location.pathname}${window.location.search}`
          : current.fullPath
      const redirect = safeRedirect(path)
      void router.replace(redirect && redirect !== '/' ? { name: 'login', query: { redirect } } : { name: 'login' })
    },
  })
}
